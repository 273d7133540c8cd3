"""Storage on the pages, the JSON API, the CSV and /metrics, over HTTP (no hub).

The web app of test_usage_web.py, its ledger given homes and snapshots:
ada keeps a 10 GB home and a snapshot, fay never ran a server but keeps a
home, bob none. Prices: 0.10 EUR per GB-month, then 0.20.
"""

import re
from datetime import timedelta
from decimal import Decimal

import pytest

from jupyter_gpu_meter import usage
from jupyter_gpu_meter.ledger import StoragePeriod
from jupyter_gpu_meter.pricing import storage_charge
from tests.test_usage_web import NOW, body, fetch, rows_of, serve_app
from tests.test_usage_web import meter as usage_meter

GB = 10**9
HOUR = timedelta(hours=1)
meter = usage_meter


def period(user, volume, kind, start, end, size, price="0.10"):
    return StoragePeriod(user, volume, kind, start, end, size, Decimal(price), "EUR")


@pytest.fixture
def stored(meter):
    ledger = meter.ledger
    start = NOW - 146 * HOUR
    ledger.add_storage_periods(
        [
            period("ada", "home-ada", "home", start, NOW - 73 * HOUR, 10 * GB),
            period("fay", "home-fay", "home", start, NOW - 73 * HOUR, 2 * GB),
        ],
        NOW - 73 * HOUR,
    )
    ledger.add_storage_periods(
        [
            period("ada", "home-ada", "home", NOW - 73 * HOUR, NOW, 10 * GB, "0.20"),
            period("ada", "snap-ada", "snapshot", NOW - HOUR, NOW, 5 * GB, "0.20"),
            period("fay", "home-fay", "home", NOW - 73 * HOUR, NOW, 2 * GB, "0.20"),
        ],
        NOW,
    )
    return meter


@pytest.fixture
async def app(stored):
    # as MeterService.home_volumes
    stored.home_volumes = type("HomeVolumes", (), {"size_warning": 8 * GB})()
    server, app = serve_app(stored)
    yield app
    server.stop()


def ada_storage_charge():
    return (
        storage_charge(10 * GB, NOW - 146 * HOUR, NOW - 73 * HOUR, "0.10")
        + storage_charge(10 * GB, NOW - 73 * HOUR, NOW, "0.20")
        + storage_charge(5 * GB, NOW - HOUR, NOW, "0.20")
    )


async def test_api_usage_gives_storage_beside_gpu_charges_and_the_volumes_now(app):
    data = body(await fetch(app, "api/usage", "ada-token"))
    storage = data["all_time"]["storage"]
    assert storage["gb_hours"] == usage.decimal_string(Decimal(10 * 146 + 5))
    [charge] = storage["charges"]
    assert charge == usage.money(ada_storage_charge(), "EUR")
    assert Decimal(charge["amount"]) == Decimal("0.300000") + Decimal("0.001370")  # 0.1 + 0.2 + ...
    gpu = Decimal(data["all_time"]["charges"][0]["amount"])
    total = Decimal(data["all_time"]["total_charges"][0]["amount"])
    assert total == pytest.approx(gpu + Decimal(charge["amount"]), abs=Decimal("0.000001"))
    assert data["storage_now"] == {
        "measured_at": "2026-11-20T12:00:00Z",
        "measured_at_text": "2026-11-20 12:00 UTC",
        "size_warning_bytes": 8 * GB,
        "bytes": 15 * GB,
        "volumes": [
            {"name": "home-ada", "kind": "home", "size_bytes": 10 * GB, "over_size_warning": True},
            {
                "name": "snap-ada",
                "kind": "snapshot",
                "size_bytes": 5 * GB,
                "over_size_warning": False,
            },
        ],
    }
    # a range clips storage like sessions: the last 73 hours of the home, the snapshot
    since = usage.isoformat(NOW - 73 * HOUR)
    ranged = body(await fetch(app, f"api/usage?since={since}", "ada-token"))["totals"]["storage"]
    assert ranged["gb_hours"] == usage.decimal_string(Decimal(10 * 73 + 5))


async def test_someone_without_a_server_is_charged_for_their_home(app):
    data = body(await fetch(app, "api/users?sort=user&order=asc", "admin-token"))
    fay = next(row for row in data["users"]["items"] if row["user"] == "fay")
    assert (fay["sessions"], fay["charges"], fay["last_active"]) == (0, [], None)
    assert fay["storage"]["gb_hours"] == usage.decimal_string(Decimal(2 * 146))
    assert fay["storage_bytes"] == 2 * GB and fay["storage_over_size_warning"] is False
    ada = next(row for row in data["users"]["items"] if row["user"] == "ada")
    assert ada["storage_over_size_warning"] is True
    everyone = Decimal(data["totals"]["storage"]["gb_hours"])
    assert everyone == Decimal(10 * 146 + 5 + 2 * 146)


async def test_the_csv_adds_a_storage_line_per_volume_and_price(app):
    rows = rows_of(await fetch(app, "api/export.csv?user=ada", "admin-token"))
    assert {r["kind"] for r in rows} == {"session", "storage"}
    sessions = [r for r in rows if r["kind"] == "session"]
    assert all(r["volume"] == "" and r["session_id"] for r in sessions)
    storage = [
        (r["volume"], r["volume_kind"], r["price_per_gb_month"], r["billed_from"])
        for r in rows
        if r["kind"] == "storage"
    ]
    assert storage == [
        ("home-ada", "home", "0.100000", usage.isoformat(NOW - 146 * HOUR)),
        ("home-ada", "home", "0.200000", usage.isoformat(NOW - 73 * HOUR)),
        ("snap-ada", "snapshot", "0.200000", usage.isoformat(NOW - HOUR)),
    ]
    line = next(r for r in rows if r["kind"] == "storage")
    assert (line["session_id"], line["gpus"], line["gpu_hours"]) == ("", "", "")
    assert line["storage_gb_hours"] == "730.000000" and line["charge"] == "0.100000"
    assert sum(Decimal(r["charge"]) for r in rows if r["kind"] == "storage") == pytest.approx(
        ada_storage_charge(), abs=Decimal("0.00001")
    )


async def test_metrics_give_volume_sizes_and_storage_per_user(app):
    text = (await fetch(app, "metrics", "prometheus-token")).body.decode()
    assert (
        'jupyter_gpu_meter_volume_size_bytes{kind="home",user="ada",volume="home-ada"} 1e+10'
        in text
    )
    assert 'jupyter_gpu_meter_user_storage_gb_hours_total{user="fay"} 292.0' in text
    assert 'jupyter_gpu_meter_user_storage_charges_total{currency="EUR",user="fay"}' in text
    [measured] = re.findall(
        r"^jupyter_gpu_meter_storage_last_measured_timestamp_seconds (\S+)", text, re.M
    )
    assert float(measured) == NOW.timestamp()


async def test_pages_show_storage_and_the_size_warning(app):
    page = (await fetch(app, "", "ada-token")).body.decode()
    assert 'id="gpu-meter-storage"' in page
    assert "10.00 GB" in page and "5.00 GB" in page
    assert 'id="gpu-meter-storage-warning"' in page  # the home is above 8 GB
    admin = (await fetch(app, "admin", "admin-token")).body.decode()
    assert 'id="total-storage-charges"' in admin
    assert 'data-user="fay"' in admin  # listed though she never ran a server
    quiet = (await fetch(app, "", "bob-token")).body.decode()
    assert 'id="no-storage"' in quiet and "gpu-meter-storage-warning" not in quiet
