"""The usage core's efficiency and energy: per session, per user, in words. Pure.

Records built by hand (the ledger's own tests and ``test_efficiency_web.py``
take the data path); every number here is worked out by hand.
"""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from jupyter_gpu_meter import budgets, usage
from jupyter_gpu_meter.ledger import SessionRecord
from jupyter_gpu_meter.ledger.records import EfficiencySum, ProcessGroupUsage, SessionEfficiency
from jupyter_gpu_meter.pricing import PriceSnapshot
from jupyter_gpu_meter.service.metrics import efficiency_families
from jupyter_gpu_meter.usage.totals import UserTotals

UTC = timezone.utc
START = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
H100 = "NVIDIA H100 80GB HBM3"
#: one kWh in millijoules
KWH_MJ = 3_600_000_000


def session(*, gpus=1, hours=1, running=False, energy_price="0.30", id=1, user="ada"):
    ended = None if running else START + timedelta(hours=hours)
    return SessionRecord(
        id=id,
        container_id=f"{id:064x}",
        user=user,
        server="",
        profile="",
        gpu_uuids=tuple(f"GPU-{i}" for i in range(gpus)),
        gpu_model=H100 if gpus else "",
        price=PriceSnapshot(
            H100 if gpus else "",
            gpus,
            "2.00",
            "0.10",
            "USD",
            energy_price_per_kwh=Decimal(energy_price),
        ),
        started_at=START,
        ended_at=ended,
        end_reason=None if running else "stopped",
        last_seen_at=ended or START,
    )


def measured(busy_ms=2_628_000, energy_mj=KWH_MJ // 10, memory=10 * 2**30, source="utilization"):
    return SessionEfficiency(1, busy_ms, memory, energy_mj, source)


# --- words ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fraction, text",
    [
        (0.73, "73%"),
        (0.735, "74%"),  # half up, from the decimal the float stands for
        (Decimal("0.005"), "1%"),
        (0, "0%"),
        (1, "100%"),
        (None, "–"),
    ],
)
def test_a_share_is_a_whole_percent_half_up_and_a_dash_when_unknown(fraction, text):
    assert usage.format_share(fraction) == text


@pytest.mark.parametrize(
    "kwh, text",
    [
        (Decimal("1.2345"), "1.235 kWh"),  # three places: watt-hours, half up
        (Decimal("0.0004"), "0.000 kWh"),
        (Decimal(0), "0.000 kWh"),
        (Decimal("1234.5"), "1,234.500 kWh"),
        (None, "–"),
    ],
)
def test_energy_is_kwh_to_the_watt_hour_and_a_dash_when_unknown(kwh, text):
    assert usage.format_energy(kwh) == text


# --- one session ---------------------------------------------------------------------


def test_a_sessions_busy_share_idle_time_and_energy_from_what_was_measured():
    now = START + timedelta(hours=5)
    found = usage.session_efficiency(session(), measured(), now=now)
    assert found.billed_gpu_seconds == 3600
    assert found.busy_gpu_seconds == Decimal("2628")
    assert found.idle_gpu_seconds == Decimal("972")
    assert found.busy_share == pytest.approx(0.73)
    assert found.energy_kwh == Decimal("0.1")
    assert found.energy_charge == Decimal("0.03")  # 0.1 kWh at 0.30 per kWh
    assert found.memory_max_bytes == 10 * 2**30
    assert found.to_json() == {
        "billed_gpu_seconds": "3600.000000",
        "busy_gpu_seconds": "2628.000000",
        "idle_gpu_seconds": "972.000000",
        "busy_share": 0.73,
        "busy_share_text": "73%",
        "busy_source": "utilization",
        "energy_kwh": "0.100000000",
        "energy_kwh_text": "0.100 kWh",
        "energy_charge": {"amount": "0.030000", "currency": "USD", "text": "0.03 USD"},
        "memory_max_bytes": 10 * 2**30,
    }


def test_two_gpus_are_billed_twice_and_busy_is_clipped_to_what_was_billed():
    two = session(gpus=2)
    half = usage.session_efficiency(two, measured(busy_ms=3_600_000), now=START)
    assert half.billed_gpu_seconds == 7200 and half.busy_share == 0.5
    # more busy time than billed (a writer's ticks around the stop): never above 100 %
    over = usage.session_efficiency(session(), measured(busy_ms=3_700_000), now=START)
    assert over.busy_share == 1.0 and over.idle_gpu_seconds == 0


def test_a_running_session_is_measured_up_to_now():
    running = session(running=True)
    found = usage.session_efficiency(
        running, measured(busy_ms=900_000), now=START + timedelta(minutes=30)
    )
    assert found.billed_gpu_seconds == 1800 and found.busy_share == 0.5


def test_nothing_measured_is_unknown_not_zero():
    for found in (
        usage.session_efficiency(session(), None, now=START),
        usage.session_efficiency(session(), SessionEfficiency(1, None, None, None, ""), now=START),
    ):
        data = found.to_json()
        assert data["busy_gpu_seconds"] is None and data["busy_share"] is None
        assert data["idle_gpu_seconds"] is None and data["energy_kwh"] is None
        assert data["busy_share_text"] == "–" and data["energy_kwh_text"] == "–"
        assert data["energy_charge"]["amount"] == "0.000000"
        assert data["memory_max_bytes"] is None and data["busy_source"] == ""


def test_a_cpu_only_server_has_no_busy_share_and_energy_without_a_price_is_free():
    cpu = usage.session_efficiency(session(gpus=0), measured(), now=START)
    assert cpu.busy_share is None and cpu.busy_gpu_seconds is None
    free = usage.session_efficiency(session(energy_price="0"), measured(), now=START)
    assert free.energy_kwh == Decimal("0.1") and free.energy_charge == 0


def test_the_session_usage_the_api_gives_carries_its_efficiency():
    item = usage.session_usage(session(), now=START, measured=measured())
    data = item.to_json()
    assert data["busy_share_text"] == "73%" and data["energy_kwh_text"] == "0.100 kWh"
    assert data["charge"]["text"] == "2.00 USD"


def group(name, present_ms, busy_ms=0):
    return ProcessGroupUsage(
        name, 10, present_ms, busy_ms, 2**30, START, START + timedelta(hours=1)
    )


def test_where_a_sessions_gpu_time_went_by_process_group():
    groups = [group("python", 3_480_000, 2_550_000), group("torchrun", 120_000)]
    assert usage.format_processes(groups) == "python 58 min, torchrun 2 min"
    many = [*groups, group("a", 59_000), group("b", 1_000), group("c", 500)]
    assert usage.format_processes(many) == "python 58 min, torchrun 2 min, a 59 s, + 2 more"
    assert usage.format_processes([]) == ""
    (first, _) = usage.processes_json(groups)
    assert first == {
        "group": "python",
        "gpu_seconds": "3480.000000",
        "busy_gpu_seconds": "2550.000000",
        "memory_max_bytes": 2**30,
        "first_seen": "2026-11-20T10:00:00Z",
        "last_seen": "2026-11-20T11:00:00Z",
    }
    item = usage.session_usage(session(), now=START, processes=groups).to_json()
    assert item["processes_text"] == "python 58 min, torchrun 2 min"
    assert [g["group"] for g in item["processes"]] == ["python", "torchrun"]


# --- per user ------------------------------------------------------------------------


def test_per_user_busy_idle_and_energy_add_up_and_energy_is_charged_on_top():
    now = START + timedelta(days=1)
    sessions = [session(id=1), session(id=2, user="bob", gpus=2)]
    efficiency = [
        EfficiencySum("ada", 2_628_000, KWH_MJ // 10, 30_000_000 * 3600 // 1000, "USD"),
        EfficiencySum("bob", None, None, 0, "USD"),
    ]
    by_user = usage.totals_by_user(sessions, now=now, efficiency=efficiency)
    ada, bob = by_user["ada"], by_user["bob"]
    assert ada.gpu_hours == 1 and ada.busy_gpu_hours == Decimal("0.73")
    assert ada.idle_gpu_hours == Decimal("0.27") and ada.busy_share == pytest.approx(0.73)
    assert ada.energy_kwh == Decimal("0.1")
    assert ada.energy_charges == {"USD": Decimal("0.03")}
    assert ada.total_charges == {"USD": Decimal("2.03")}  # 1 GPU-hour at 2.00, energy on top
    assert bob.busy_gpu_hours is None and bob.idle_gpu_hours is None and bob.energy_kwh is None
    fleet = usage.totals(sessions, now=now, efficiency=efficiency)
    # the unknown adds nothing; the known stays known
    assert fleet.idle_gpu_hours == Decimal("0.27") and fleet.energy_kwh == Decimal("0.1")
    json = ada.to_json("USD")
    assert json["busy_gpu_hours"] == "0.730000" and json["idle_gpu_hours_text"] == "0.27"
    assert json["busy_share_text"] == "73%"
    assert json["energy"]["kwh_text"] == "0.100 kWh"
    assert json["energy"]["charges_text"] == "0.03 USD"
    assert json["total_charges_text"] == "2.03 USD"
    assert bob.to_json("USD")["idle_gpu_hours"] is None


def test_idle_is_never_negative_per_user():
    efficiency = [EfficiencySum("ada", 4_000_000, None, 0, "USD")]  # more than the hour billed
    ada = usage.totals_by_user([session()], now=START, efficiency=efficiency)["ada"]
    assert ada.idle_gpu_hours == 0 and ada.busy_share == 1.0


def test_users_sort_by_idle_gpu_hours_unknown_last_when_descending():
    rows = [
        UserTotals("ada", usage.Totals(idle_gpu_hours=Decimal(1)), None),
        UserTotals("bob", usage.Totals(), None),
        UserTotals("cy", usage.Totals(idle_gpu_hours=Decimal(5)), None),
        UserTotals("di", usage.Totals(idle_gpu_hours=Decimal(0)), None),
    ]
    down = usage.sort_users(rows, "idle_gpu_hours", descending=True, currency="USD")
    assert [row.user for row in down] == ["cy", "ada", "di", "bob"]
    up = usage.sort_users(rows, "idle_gpu_hours", descending=False, currency="USD")
    assert [row.user for row in up] == ["bob", "di", "ada", "cy"]


# --- the CSV's line ------------------------------------------------------------------


def test_the_csv_gives_the_whole_sessions_efficiency_on_its_last_line_only():
    whole = usage.export_row(session(), now=START + timedelta(days=1), measured=measured())
    assert whole["busy_gpu_seconds"] == "2628.000000" and whole["busy_share"] == "0.7300"
    assert whole["energy_kwh"] == "0.100000000" and whole["energy_charge"] == "0.030000"
    assert whole["energy_price_per_kwh"] == "0.300000"
    assert whole["busy_source"] == "utilization" and whole["memory_max_bytes"] == 10 * 2**30
    assert list(whole) == list(usage.EXPORT_COLUMNS)
    cut = START + timedelta(minutes=30)
    first = usage.export_row(session(), now=cut, until=cut, measured=measured())
    last = usage.export_row(session(), now=cut, since=cut, measured=measured())
    assert all(first[column] == "" for column in usage.EFFICIENCY_COLUMNS)
    assert last["energy_kwh"] == "0.100000000"
    unknown = usage.export_row(session(), now=START, measured=None)
    assert unknown["busy_share"] == "" and unknown["energy_charge"] == ""


# --- budgets: energy is money ----------------------------------------------------------


def test_energy_counts_against_money_budgets_in_their_currency_only():
    sessions = [session()]
    now = START + timedelta(hours=2)
    energy = [
        EfficiencySum("ada", None, KWH_MJ, 300_000 * 3600, "USD"),  # 1 kWh at 0.30
        EfficiencySum("ada", None, KWH_MJ, 300_000 * 3600, "EUR"),
    ]
    money = budgets.spent(
        sessions, unit="money", currency="USD", since=START, now=now, energy=energy
    )
    assert money == Decimal("2.30")
    hours = budgets.spent(
        sessions, unit="gpu-hours", currency=None, since=START, now=now, energy=energy
    )
    assert hours == 1


# --- /metrics ------------------------------------------------------------------------


def test_metrics_give_busy_and_idle_gpu_seconds_and_energy_per_user():
    rows = usage.usage_by_user(
        [session()],
        now=START + timedelta(days=1),
        efficiency=[EfficiencySum("ada", 2_628_000, KWH_MJ, 300_000 * 3600, "USD")],
    )
    families = {family.name: family for family in efficiency_families(rows)}
    value = {name: [s.value for s in f.samples] for name, f in families.items()}
    assert value["jupyter_gpu_meter_user_busy_gpu_seconds"] == [2628.0]
    assert value["jupyter_gpu_meter_user_idle_gpu_seconds"] == [972.0]
    assert value["jupyter_gpu_meter_user_energy_joules"] == [3_600_000.0]
    assert value["jupyter_gpu_meter_user_energy_charges"] == [0.3]
