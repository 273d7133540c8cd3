"""Busy share, idle GPU-hours and energy from the ledger to every surface.

Sessions and their rollups are written through the real Ledger (SQLite and
PostgreSQL), so every number the user page, the admin page, ``api/usage``,
``api/users``, the CSV, ``jupyter-gpu-meter report``, /metrics and the budget
give comes from the data path. The figures are worked out by hand:

- ada: one H100 for one hour at 2.00 USD, busy 73 % of each minute, 6 kJ a
  minute (0.1 kWh in the hour) at 0.30 USD per kWh: 2.00 + 0.03 USD;
- bob: two H100s for one hour, busy 20 % on one of them (0.2 of 2 GPU-hours),
  no energy counter: energy unknown;
- cyd: a CPU-only server: busy and idle unknown.
"""

import csv
import io
import json
import re
from contextlib import redirect_stdout
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest

from jupyter_gpu_meter.budgets import budget_view
from jupyter_gpu_meter.cli.report import ReportCommand
from jupyter_gpu_meter.ledger import Ledger, RollupRow
from jupyter_gpu_meter.ledger.records import ProcessUsageRow
from jupyter_gpu_meter.pricing import Pricing
from jupyter_gpu_meter.service.state import MeterState
from tests.test_usage_web import H100, NOW, add_session, fetch, serve_app

START = NOW - timedelta(days=1)
MINUTE_MS = 60_000
#: a minute of 6 kJ: 60 of them are 360 kJ = 0.1 kWh
MINUTE_MJ = 6_000_000


def rollups(container_id, gpu, *, busy, energy_mj, memory=10 * 2**30, source="utilization"):
    """Sixty minutes of one GPU, busy `busy` of each minute, as the meter writes them."""
    return [
        RollupRow(
            container_id,
            gpu,
            START + timedelta(minutes=m),
            "host:1:1",
            60,
            busy * 100,
            100,
            memory if m == 30 else memory // 2,
            busy_ms=int(busy * MINUTE_MS),
            energy_mj=energy_mj,
            busy_source=source,
        )
        for m in range(60)
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/ledger.sqlite"
    else:
        url = request.getfixturevalue("postgres_url")
    ledger = Ledger(url)
    ledger.upgrade()
    pricing = Pricing(prices={H100: "2.00"}, cpu_price="0.10", currency="USD", energy_price="0.30")
    hour = timedelta(hours=1)
    ada = add_session(ledger, pricing, "ada", START, START + hour)
    bob = add_session(ledger, pricing, "bob", START, START + hour, gpus=2)
    add_session(ledger, pricing, "cyd", START, START + hour, gpus=0)
    ledger.add_rollups(rollups(ada, "GPU-ada-0", busy=0.73, energy_mj=MINUTE_MJ))
    ledger.add_process_usage(
        [
            ProcessUsageRow(
                ada, "python", "host:1:1", 3480, 3_480_000, 2_550_000, 2**33, START, START + hour
            ),
            ProcessUsageRow(
                ada, "torchrun", "host:1:1", 120, 120_000, 0, 2**30, START, START + hour
            ),
        ]
    )
    ledger.add_rollups(rollups(bob, "GPU-bob-0", busy=0.2, energy_mj=None))
    ledger.add_rollups(rollups(bob, "GPU-bob-1", busy=0, energy_mj=None))
    ledger.set_budget(
        scope="user",
        name="ada",
        amount="10",
        unit="money",
        period="month",
        currency="USD",
        by="test",
        at=START - timedelta(days=30),
    )
    ledger.url_for_tests = url
    yield ledger
    ledger.close()


@pytest.fixture
async def app(ledger):
    meter = SimpleNamespace(
        ledger=ledger,
        pricing=Pricing(currency="USD"),
        state=MeterState(),
        health=lambda: {"gpu_sampling": "on"},
        budget_view=lambda name: budget_view(ledger.user_budget_status(name, [], NOW), 0.8),
    )
    server, app = serve_app(meter)
    yield app
    server.stop()


def cell(row: str, name: str) -> str:
    match = re.search(rf'class="[^"]*gpu-meter-{name}[^"]*"[^>]*>\s*([^<]*)', row)
    assert match, f"no gpu-meter-{name} cell in {row}"
    return match.group(1).strip()


async def test_api_usage_gives_each_session_its_busy_share_and_energy_next_to_its_charge(app):
    data = json.loads((await fetch(app, "api/usage?user=ada", "admin-token")).body)
    (item,) = data["sessions"]["items"]
    assert item["charge"]["text"] == "2.00 USD"
    assert item["billed_gpu_seconds"] == "3600.000000"
    assert item["busy_gpu_seconds"] == "2628.000000" and item["idle_gpu_seconds"] == "972.000000"
    assert item["busy_share"] == 0.73 and item["busy_share_text"] == "73%"
    assert item["busy_source"] == "utilization"
    assert item["energy_kwh"] == "0.100000000" and item["energy_kwh_text"] == "0.100 kWh"
    assert item["energy_charge"] == {"amount": "0.030000", "currency": "USD", "text": "0.03 USD"}
    assert item["memory_max_bytes"] == 10 * 2**30
    assert item["processes_text"] == "python 58 min, torchrun 2 min"
    assert item["processes"][0]["busy_gpu_seconds"] == "2550.000000"
    totals = data["all_time"]
    assert totals["busy_gpu_hours"] == "0.730000" and totals["idle_gpu_hours"] == "0.270000"
    assert totals["busy_share_text"] == "73%"
    assert totals["energy"]["kwh"] == "0.100000000"
    assert totals["energy"]["charges_text"] == "0.03 USD"
    assert totals["charges_text"] == "2.00 USD" and totals["total_charges_text"] == "2.03 USD"


async def test_unknown_is_null_not_zero(app):
    bob = json.loads((await fetch(app, "api/usage?user=bob", "admin-token")).body)
    (item,) = bob["sessions"]["items"]
    assert item["busy_share"] == 0.1 and item["energy_kwh"] is None
    assert item["energy_kwh_text"] == "–" and item["energy_charge"]["amount"] == "0.000000"
    cyd = json.loads((await fetch(app, "api/usage?user=cyd", "admin-token")).body)
    (item,) = cyd["sessions"]["items"]
    assert item["busy_share"] is None and item["busy_share_text"] == "–"
    assert cyd["all_time"]["idle_gpu_hours"] is None


async def test_the_user_page_shows_each_sessions_charge_busy_share_and_energy(app):
    page = (await fetch(app, "?user=ada", "admin-token")).body.decode()
    (row,) = re.findall(r'<tr data-session-id="\d+">.*?</tr>', page, re.S)
    assert cell(row, "charge") == "2.00 USD"
    assert cell(row, "busy") == "73%"
    assert cell(row, "energy") == "0.100 kWh"
    assert cell(row, "energy-charge") == "0.03 USD"
    assert cell(row, "memory") == "10.0 GiB"
    assert cell(row, "processes") == "python 58 min, torchrun 2 min"
    assert re.search(r'id="range-busy">73%<', page)
    assert re.search(r'id="all-busy">73%<', page)
    assert re.search(r'id="all-energy">0\.100 kWh<', page)
    assert re.search(r'id="all-energy-charges">0\.03 USD<', page)


async def test_users_sort_by_idle_gpu_hours_and_the_fleet_total_is_shown(app):
    data = json.loads(
        (await fetch(app, "api/users?sort=idle_gpu_hours&since=", "admin-token")).body
    )
    users = [(row["user"], row["idle_gpu_hours"]) for row in data["users"]["items"]]
    assert users == [("bob", "1.800000"), ("ada", "0.270000"), ("cyd", None)]
    assert data["totals"]["idle_gpu_hours"] == "2.070000"
    assert data["totals"]["energy"]["kwh_text"] == "0.100 kWh"
    ascending = json.loads(
        (await fetch(app, "api/users?sort=idle_gpu_hours&order=asc", "admin-token")).body
    )
    assert [row["user"] for row in ascending["users"]["items"]] == ["cyd", "ada", "bob"]
    page = (
        await fetch(app, "admin?since=&until=&sort=idle_gpu_hours&order=desc", "admin-token")
    ).body.decode()
    assert re.findall(r'<tr data-user="([^"]+)"', page) == ["bob", "ada", "cyd"]
    assert re.search(r'id="total-idle-gpu-hours">2\.07<', page)
    assert re.search(r'<span class="gpu-meter-busy">73%</span> busy', page)  # ada's
    assert 'aria-sort="descending"' in page and 'data-sort="idle_gpu_hours"' in page
    assert re.search(r'id="total-energy">0\.100 kWh<', page)


async def test_the_csv_has_each_sessions_efficiency_and_energy(app):
    text = (await fetch(app, "api/export.csv", "admin-token")).body.decode()
    lines = {row["user"]: row for row in csv.DictReader(io.StringIO(text))}
    ada = lines["ada"]
    assert (ada["busy_gpu_seconds"], ada["busy_share"]) == ("2628.000000", "0.7300")
    assert (ada["energy_kwh"], ada["energy_charge"]) == ("0.100000000", "0.030000")
    assert ada["energy_price_per_kwh"] == "0.300000" and ada["busy_source"] == "utilization"
    assert ada["memory_max_bytes"] == str(10 * 2**30)
    assert lines["bob"]["energy_kwh"] == "" and lines["cyd"]["busy_share"] == ""


async def test_metrics_give_busy_idle_and_energy_per_user(app):
    text = (await fetch(app, "metrics", "prometheus-token")).body.decode()
    assert 'jupyter_gpu_meter_user_busy_gpu_seconds_total{user="ada"} 2628.0' in text
    # a gauge: billed minus busy may dip when busy minutes arrive, a counter may not
    assert "# TYPE jupyter_gpu_meter_user_idle_gpu_seconds gauge" in text
    assert 'jupyter_gpu_meter_user_idle_gpu_seconds{user="ada"} 972.0' in text
    assert 'jupyter_gpu_meter_user_idle_gpu_seconds{user="bob"} 6480.0' in text
    assert 'jupyter_gpu_meter_user_energy_joules_total{user="ada"} 360000.0' in text
    assert 'jupyter_gpu_meter_user_energy_charges_total{currency="USD",user="ada"} 0.03' in text
    assert 'user_idle_gpu_seconds{user="cyd"}' not in text  # unknown: absent


def test_the_report_and_the_budget_count_the_energy(ledger):
    command = ReportCommand(db_url=ledger.url_for_tests, user="ada")
    command.format = "json"
    out = io.StringIO()
    with redirect_stdout(out):
        command.start()
    (row,) = json.loads(out.getvalue())
    assert row["busy_gpu_hours"] == "0.7300" and row["idle_gpu_hours"] == "0.2700"
    assert row["energy_kwh"] == "0.100" and row["energy_charges"] == "0.03"
    status = ledger.user_budget_status("ada", [], NOW)
    assert status.spent == Decimal("2.03")  # GPU time and energy: money
