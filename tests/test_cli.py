"""jupyter-gpu-meter report and upgrade-db, run as a user runs them."""

import csv
import io
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from jupyter_gpu_meter.ledger import Ledger, StoragePeriod
from jupyter_gpu_meter.pricing import PriceSnapshot

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def cli(*args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "jupyter_gpu_meter.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def price(gpus, per_hour="2.49", increment=1, currency="USD"):
    return PriceSnapshot(
        gpu_model="NVIDIA H100 80GB HBM3" if gpus else "",
        gpus=gpus,
        price_per_gpu_hour=Decimal(per_hour) if gpus else Decimal(0),
        cpu_price_per_hour=Decimal("0.10"),
        currency=currency,
        billing_increment_s=increment,
    )


def add(ledger, cid, user, gpus, start, minutes, **price_kwargs):
    ledger.open_session(
        container_id=cid,
        user=user,
        server="",
        gpu_uuids=[f"GPU-{cid}-{i}" for i in range(gpus)],
        gpu_model="NVIDIA H100 80GB HBM3" if gpus else "",
        profile="",
        price=price(gpus, **price_kwargs),
        started_at=start,
    )
    if minutes is not None:
        ledger.close_session(cid, ended_at=start + timedelta(minutes=minutes), reason="stopped")


@pytest.fixture
def ledger_url(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.sqlite"
    assert "up to date" in cli("upgrade-db", "--db-url", url).stdout
    with Ledger(url) as ledger:
        add(ledger, "a1", "ada", 1, T0, 60)  # 1 GPU-hour at 2.49
        add(ledger, "a2", "ada", 2, T0 + timedelta(days=1), 30)  # 1 GPU-hour at 2.49
        add(ledger, "b1", "bob", 1, T0, 1.5, increment=60)  # 90 s billed as 120 s
        add(ledger, "c1", "cyd", 0, T0, 120)  # CPU only: 2 h at 0.10
        add(ledger, "d1", "dan", 1, datetime.now(timezone.utc), None)  # running
        # eve never ran a server: a 10 GB home for 73 hours at 0.10 per GB-month
        home = StoragePeriod("eve", "home-eve", "home", T0, T0 + timedelta(hours=73), 10**10,
                             Decimal("0.10"), "USD")  # fmt: skip
        ledger.add_storage_periods([home], home.ended_at)
    return url


def report(url, *args):
    return json.loads(cli("report", "--db-url", url, "--format", "json", *args).stdout)


def test_report_per_user(ledger_url):
    rows = {row["user"]: row for row in report(ledger_url)}
    assert rows["ada"] == {
        "user": "ada",
        "sessions": 2,
        "running": 0,
        "gpu_hours": "2.0000",
        "charges": "4.98",
        "storage_gb_hours": "0.0000",
        "storage_charges": "0.00",
        # no GPU sample, no energy counter in this ledger: unknown, not 0
        "busy_gpu_hours": None,
        "idle_gpu_hours": None,
        "energy_kwh": None,
        "energy_charges": "0.00",
        "currency": "USD",
    }
    assert (rows["eve"]["sessions"], rows["eve"]["charges"]) == (0, "0.00")
    assert (rows["eve"]["storage_gb_hours"], rows["eve"]["storage_charges"]) == ("730.0000", "0.10")
    assert (rows["bob"]["gpu_hours"], rows["bob"]["charges"]) == ("0.0250", "0.08")
    assert (rows["cyd"]["gpu_hours"], rows["cyd"]["charges"]) == ("0.0000", "0.20")
    assert (rows["dan"]["sessions"], rows["dan"]["running"]) == (1, 1)


def test_report_filters_by_user_and_clips_to_the_range(ledger_url):
    assert [row["user"] for row in report(ledger_url, "--user", "ada")] == ["ada"]
    # only the second half hour of ada's first session lies after 09:30
    (ada,) = report(
        ledger_url, "--user", "ada", "--since", "2026-11-02T09:30", "--until", "2026-11-03"
    )
    assert (ada["sessions"], ada["gpu_hours"], ada["charges"]) == (1, "0.5000", "1.25")
    # storage is clipped to the range too: half of eve's 73 hours
    (eve,) = report(ledger_url, "--user", "eve", "--until", "2026-11-03T21:30")
    assert (eve["storage_gb_hours"], eve["storage_charges"]) == ("365.0000", "0.05")


def test_report_as_csv_and_table(ledger_url):
    rows = list(
        csv.DictReader(io.StringIO(cli("report", "--db-url", ledger_url, "--format", "csv").stdout))
    )
    assert rows[0] == {
        "user": "ada",
        "sessions": "2",
        "running": "0",
        "gpu_hours": "2.0000",
        "charges": "4.98",
        "storage_gb_hours": "0.0000",
        "storage_charges": "0.00",
        "busy_gpu_hours": "",
        "idle_gpu_hours": "",
        "energy_kwh": "",
        "energy_charges": "0.00",
        "currency": "USD",
    }
    table = cli("report", "--db-url", ledger_url).stdout.splitlines()
    assert table[0].split() == [
        "user",
        "sessions",
        "running",
        "gpu_hours",
        "charges",
        "storage_gb_hours",
        "storage_charges",
        "busy_gpu_hours",
        "idle_gpu_hours",
        "energy_kwh",
        "energy_charges",
        "currency",
    ]
    assert table[1].split() == [
        *("ada", "2", "0", "2.0000", "4.98", "0.0000", "0.00"),
        *("–", "–", "–", "0.00", "USD"),
    ]


def test_report_on_a_database_without_the_schema_says_what_to_run(tmp_path):
    result = cli("report", "--db-url", f"sqlite:///{tmp_path}/empty.sqlite", check=False)
    assert result.returncode == 2
    assert "jupyter-gpu-meter upgrade-db" in result.stderr


def test_report_with_a_bad_date_says_the_format(ledger_url):
    result = cli("report", "--db-url", ledger_url, "--since", "last tuesday", check=False)
    assert result.returncode == 2
    assert "'last tuesday' is not an ISO 8601 date or time: use ISO 8601" in result.stderr


def test_report_reads_the_ledger_named_in_the_config_file(ledger_url, tmp_path):
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(f"c = get_config()\nc.MeterService.db_url = {ledger_url!r}\n")
    rows = json.loads(cli("report", "--config", str(config), "--format", "json").stdout)
    assert {row["user"] for row in rows} == {"ada", "bob", "cyd", "dan", "eve"}
