"""Budgets as pure functions on ledger records, with a moved clock."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from jupyter_gpu_meter import budgets
from jupyter_gpu_meter.budgets import (
    BudgetStatus,
    budget_status,
    effective_budget,
    granted,
    hourly_usage,
    parse_amount,
    parse_period,
    period_start,
)
from jupyter_gpu_meter.ledger.records import BudgetChange, BudgetRecord, SessionRecord
from jupyter_gpu_meter.pricing import PriceSnapshot

H100 = "NVIDIA H100 80GB HBM3"
#: late in November 2026
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
NOVEMBER = datetime(2026, 11, 1, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def budget(name="ada", amount="50", scope="user", unit="money", currency="USD", period="month"):
    return BudgetRecord(
        scope=scope,
        name=name,
        amount=Decimal(amount),
        unit=unit,
        currency=currency if unit == "money" else None,
        period=period,
        updated_at=NOVEMBER,
        updated_by="admin",
    )


def change(at, amount="10", name="ada", scope="user", kind="grant", unit="money", currency="USD"):
    return BudgetChange(
        id=0,
        at=at,
        by="admin",
        scope=scope,
        name=name,
        change=kind,
        amount=Decimal(amount),
        unit=unit,
        currency=currency if unit == "money" else None,
        period=None,
        note="",
    )


def session(start, end=None, *, user="ada", gpus=1, per_hour="2.00", currency="USD", cpu="0.10"):
    """A session of `gpus` GPUs at `per_hour` per GPU-hour; end None: running."""
    price = PriceSnapshot(
        gpu_model=H100 if gpus else "",
        gpus=gpus,
        price_per_gpu_hour=Decimal(per_hour) if gpus else Decimal(0),
        cpu_price_per_hour=Decimal(cpu),
        currency=currency,
    )
    return SessionRecord(
        id=0,
        container_id=f"c-{start.isoformat()}",
        user=user,
        server="",
        gpu_uuids=tuple(f"GPU-{i}" for i in range(gpus)),
        gpu_model=price.gpu_model,
        profile="",
        price=price,
        started_at=start,
        ended_at=end,
        end_reason=None if end is None else "stopped",
        last_seen_at=end or start,
    )


# --- periods ---------------------------------------------------------------------------


def test_the_month_is_the_calendar_month_in_utc():
    assert period_start("month", NOW) == NOVEMBER
    assert period_start("month", NOVEMBER) == NOVEMBER
    assert period_start("month", NOVEMBER - timedelta(microseconds=1)) == datetime(
        2026, 10, 1, tzinfo=timezone.utc
    )
    # 05:00 on 1 December in Tokyo is still 30 November in UTC
    tokyo = datetime(2026, 12, 1, 5, 0, tzinfo=timezone(timedelta(hours=9)))
    assert period_start("month", tokyo) == NOVEMBER
    assert period_start("month", tokyo).tzinfo == timezone.utc
    assert period_start("month", datetime(2027, 1, 15, tzinfo=timezone.utc)).year == 2027


def test_a_rolling_period_is_the_last_n_days():
    assert period_start("rolling:30", NOW) == NOW - timedelta(days=30)
    assert period_start("rolling:1", NOW) == NOW - timedelta(days=1)


@pytest.mark.parametrize("period", ["weekly", "rolling:0", "rolling:-1", "rolling:x", "", None, 30])
def test_bad_periods_say_what_is_allowed(period):
    with pytest.raises(ValueError, match=r"is not allowed: use 'month' .* e.g. 'rolling:30'"):
        parse_period(period)


def test_naive_now_is_refused():
    with pytest.raises(ValueError, match="naive"):
        period_start("month", NOW.replace(tzinfo=None))


@pytest.mark.parametrize(
    "value, positive, message",
    [
        ("-1", False, "is not allowed: use a non-negative number"),
        ("0", True, "is not allowed: use a positive number"),
        ("ten", False, "is not a number"),
        ("Infinity", False, "is not a number"),
        (True, False, "is not a number"),
        ("0.0000001", False, "more than 6 decimal places"),
    ],
)
def test_bad_amounts_say_what_is_allowed(value, positive, message):
    with pytest.raises(ValueError, match=message):
        parse_amount(value, positive=positive)


def test_amounts_are_exact_decimals():
    assert parse_amount("12.50") == Decimal("12.50")
    assert parse_amount(0.1) == Decimal("0.1")
    assert parse_amount(7) == 7
    assert parse_amount("-0") == 0


# --- spent in the period ------------------------------------------------------------------


def test_only_the_part_of_a_session_inside_the_month_counts():
    across = session(NOVEMBER - HOUR, NOVEMBER + HOUR)  # 1 h in October, 1 h in November
    october = session(
        datetime(2026, 10, 5, tzinfo=timezone.utc), datetime(2026, 10, 6, tzinfo=timezone.utc)
    )
    status = budget_status(budget(), [], [across, october], now=NOW)
    assert status.spent == Decimal("2.00")
    assert status.period_start == NOVEMBER
    # the clock moved back to 23:30 on 31 October: October's share of both
    earlier = budget_status(budget(), [], [across, october], now=NOVEMBER - HOUR / 2)
    assert earlier.spent == Decimal("1.00") + Decimal("48.00")
    assert earlier.period_start == datetime(2026, 10, 1, tzinfo=timezone.utc)


def test_running_sessions_count_up_to_now():
    running = session(NOW - 3 * HOUR, gpus=2)
    status = budget_status(budget(), [], [running], now=NOW)
    assert status.spent == Decimal("12.00")
    later = budget_status(budget(), [], [running], now=NOW + HOUR)
    assert later.spent == Decimal("16.00")


def test_a_rolling_window_moves_with_the_clock():
    old = session(NOW - timedelta(days=10), NOW - timedelta(days=10) + HOUR)
    recent = session(NOW - timedelta(days=2), NOW - timedelta(days=2) + HOUR)
    week = budget(period="rolling:7")
    assert budget_status(week, [], [old, recent], now=NOW).spent == Decimal("2.00")
    assert budget_status(budget(period="rolling:30"), [], [old, recent], now=NOW).spent == 4
    # when the window has moved past it, the recent one counts only in part, then not at all
    in_part = budget_status(week, [], [old, recent], now=NOW + timedelta(days=5, minutes=30))
    assert in_part.spent == Decimal("1.00")
    gone = budget_status(week, [], [old, recent], now=NOW + timedelta(days=5, hours=1))
    assert gone.spent == 0


def test_gpu_hours_count_gpus_times_hours_and_not_cpu_servers():
    two = session(NOW - 2 * HOUR, NOW - HOUR, gpus=2)
    cpu = session(NOW - 5 * HOUR, NOW, gpus=0)
    hours = budget(unit="gpu-hours", amount="10")
    status = budget_status(hours, [], [two, cpu], now=NOW)
    assert (status.spent, status.unit_label, status.currency) == (Decimal(2), "GPU-hours", None)
    # a money budget counts the CPU server's price too
    assert budget_status(budget(), [], [two, cpu], now=NOW).spent == Decimal("4.00") + Decimal(
        "0.50"
    )


def test_only_the_users_sessions_and_the_budgets_currency_count():
    mine = session(NOW - HOUR, NOW)
    theirs = session(NOW - HOUR, NOW, user="bob")
    euros = session(NOW - HOUR, NOW, currency="EUR")
    status = budget_status(budget(), [], [mine, theirs, euros], now=NOW)
    assert status.spent == Decimal("2.00")
    assert budget_status(budget(currency="EUR"), [], [mine, euros], now=NOW).spent == 2


def test_limit_remaining_and_fraction():
    status = budget_status(budget(amount="10"), [], [session(NOW - 4 * HOUR, NOW)], now=NOW)
    assert status == BudgetStatus(
        user="ada",
        scope="user",
        name="ada",
        unit="money",
        currency="USD",
        period="month",
        period_start=NOVEMBER,
        amount=Decimal(10),
        granted=Decimal(0),
        limit=Decimal(10),
        spent=Decimal(8),
        remaining=Decimal(2),
        fraction=Decimal("0.8"),
    )
    assert not status.exhausted
    over = budget_status(budget(amount="10"), [], [session(NOW - 6 * HOUR, NOW)], now=NOW)
    assert (over.remaining, over.fraction, over.exhausted) == (0, Decimal("1.2"), True)
    zero = budget_status(budget(amount="0"), [], [], now=NOW)
    assert (zero.limit, zero.fraction, zero.exhausted) == (0, 1, True)


# --- grants --------------------------------------------------------------------------------


def test_grants_count_only_in_the_current_period():
    changes = [
        change(datetime(2026, 10, 20, tzinfo=timezone.utc), "100"),  # last month
        change(NOVEMBER + timedelta(days=4), "10"),
        change(NOW - HOUR, "2.5"),
        change(NOW + HOUR, "1000"),  # not yet
    ]
    status = budget_status(budget(), changes, [], now=NOW)
    assert (status.amount, status.granted, status.limit) == (50, Decimal("12.5"), Decimal("62.5"))
    # in December, November's grants are gone
    december = budget_status(budget(), changes, [], now=datetime(2026, 12, 2, tzinfo=timezone.utc))
    assert december.granted == 0
    # and the one given "in the future" counts once its time has come
    assert budget_status(budget(), changes, [], now=NOW + 2 * HOUR).granted == Decimal("1012.5")


def test_a_rolling_grant_counts_for_the_window_after_it():
    week = budget(period="rolling:7")
    changes = [change(NOW, "5")]
    assert budget_status(week, changes, [], now=NOW + timedelta(days=7)).granted == 5
    assert budget_status(week, changes, [], now=NOW + timedelta(days=7, seconds=1)).granted == 0


def test_grants_before_a_removal_do_not_come_back():
    changes = [
        change(NOVEMBER + timedelta(days=1), "10"),
        change(NOVEMBER + timedelta(days=2), kind="remove", amount="50"),
        change(NOVEMBER + timedelta(days=3), kind="set", amount="50"),
        change(NOVEMBER + timedelta(days=4), "3"),
    ]
    assert granted(budget(), changes, now=NOW) == 3
    # before the removal, the first grant counted
    assert granted(budget(), changes, now=NOVEMBER + timedelta(days=1, hours=1)) == 10


def test_grants_in_another_unit_or_to_others_do_not_count():
    changes = [
        change(NOW - HOUR, "5", unit="gpu-hours"),
        change(NOW - HOUR, "7", currency="EUR"),
        change(NOW - HOUR, "11", name="bob"),
        change(NOW - HOUR, "13", scope="group", name="ada"),  # a group named like the user
    ]
    assert granted(budget(), changes, now=NOW) == 0
    assert granted(budget(unit="gpu-hours"), changes, now=NOW) == 5


def test_a_group_budget_adds_the_groups_and_the_members_own_grants():
    students = budget("students", scope="group")
    changes = [
        change(NOW - HOUR, "10", scope="group", name="students"),  # for every student
        change(NOW - HOUR, "5", name="ada"),  # for ada only
        change(NOW - HOUR, "99", name="bob"),
    ]
    ada = budget_status(students, changes, [session(NOW - HOUR, NOW)], now=NOW, user="ada")
    assert (ada.user, ada.scope, ada.name) == ("ada", "group", "students")
    assert (ada.limit, ada.spent) == (Decimal(65), Decimal(2))
    cyd = budget_status(students, changes, [session(NOW - HOUR, NOW)], now=NOW, user="cyd")
    assert (cyd.limit, cyd.spent) == (Decimal(60), 0)
    with pytest.raises(ValueError, match="applies to each member: pass user="):
        budget_status(students, changes, [], now=NOW)


# --- which budget applies --------------------------------------------------------------------


def test_the_users_own_budget_overrides_their_groups():
    everything = [budget("staff", "500", "group"), budget("ada", "5"), budget("bob", "7")]
    assert effective_budget("ada", ["staff"], everything).amount == 5
    assert effective_budget("cyd", ["staff"], everything).name == "staff"
    assert effective_budget("cyd", [], everything) is None
    assert effective_budget("cyd", ["other"], everything) is None
    assert effective_budget("ada", [], []) is None


def test_among_groups_the_largest_amount_applies():
    everything = [
        budget("students", "50", "group"),
        budget("staff", "500", "group"),
        budget("interns", "50", "group"),
        budget("admins", "5000", "group"),
    ]
    assert effective_budget("ada", ["students", "staff"], everything).name == "staff"
    assert effective_budget("ada", ["students"], everything).name == "students"
    # equal amounts: the name that sorts first
    assert effective_budget("ada", ["students", "interns"], everything).name == "interns"


def test_groups_in_different_units_cannot_be_compared_the_first_name_applies():
    everything = [
        budget("students", "50", "group"),
        budget("gpu-class", "10", "group", unit="gpu-hours"),
        budget("euro-lab", "900", "group", currency="EUR"),
    ]
    assert effective_budget("ada", ["students", "gpu-class"], everything).name == "gpu-class"
    assert effective_budget("ada", ["students", "euro-lab"], everything).name == "euro-lab"


# --- what a start can afford -------------------------------------------------------------------


def status_with(remaining, unit="money", currency="USD"):
    hours = budget(amount=remaining, unit=unit, currency=currency)
    return budget_status(hours, [], [], now=NOW)


def test_hourly_usage_of_a_server_against_a_budget():
    two = session(NOW, gpus=2).price
    cpu = session(NOW, gpus=0).price
    euros = session(NOW, currency="EUR").price
    money, hours = status_with("10"), status_with("10", unit="gpu-hours")
    assert hourly_usage(money, two) == Decimal("4.00")
    assert hourly_usage(money, cpu) == Decimal("0.10")
    assert hourly_usage(money, euros) == 0  # charged in another currency: not this budget
    assert hourly_usage(hours, two) == 2
    assert hourly_usage(hours, cpu) == 0


def test_constants_match_what_the_ledger_stores():
    assert budgets.SCOPES == ("user", "group")
    assert budgets.UNITS == ("money", "gpu-hours")
    assert budgets.CHANGES == ("set", "grant", "remove")
