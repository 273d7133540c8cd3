"""The usage core's aggregation behind the pages and API (days, months, totals, export),
the API's query arguments and pages, and the spawn form's prices."""

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from jupyter_gpu_meter import usage
from jupyter_gpu_meter.ledger import MinuteUtilization, SessionRecord
from jupyter_gpu_meter.pricing import PriceSnapshot, Pricing
from jupyter_gpu_meter.service import query
from jupyter_gpu_meter.spawn_form import spawn_prices
from jupyter_gpu_meter.usage import usage_by_user

H100 = "NVIDIA H100 80GB HBM3"
UTC = timezone.utc


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


_ids = iter(range(1, 10_000))


def session(user, start, end=None, *, gpus=1, price="2.49", currency="USD", increment=1):
    n = next(_ids)
    return SessionRecord(
        id=n,
        container_id=f"{n:064x}",
        user=user,
        server="",
        gpu_uuids=tuple(f"GPU-{i}" for i in range(gpus)),
        gpu_model=H100 if gpus else "",
        profile="",
        price=PriceSnapshot(
            gpu_model=H100 if gpus else "",
            gpus=gpus,
            price_per_gpu_hour=Decimal(price) if gpus else Decimal(0),
            cpu_price_per_hour=Decimal("0.10"),
            currency=currency,
            billing_increment_s=increment,
        ),
        started_at=at(start),
        ended_at=at(end) if end else None,
        end_reason="stopped" if end else None,
        last_seen_at=at(end or start),
    )


def minute(at_: str, samples: int, mean: float):
    """One minute of a session as Ledger.utilization_of gives it."""
    return MinuteUtilization(at(at_), samples, samples * mean)


# --- days and months ----------------------------------------------------------------


def test_a_session_across_midnight_counts_on_each_day_for_its_hours_there():
    now = at("2026-11-20T12:00:00")
    overnight = session("ada", "2026-11-18T22:00:00", "2026-11-19T03:30:00", gpus=2)
    days = dict(usage.daily_gpu_hours([overnight], now=now, days=5))
    assert days[date(2026, 11, 18)] == Decimal(4)  # 2 h x 2 GPUs
    assert days[date(2026, 11, 19)] == Decimal(7)  # 3.5 h x 2 GPUs
    assert sum(days.values()) == overnight.gpu_seconds(now) / 3600
    assert list(days) == [date(2026, 11, d) for d in range(16, 21)]


def test_days_cover_exactly_the_window_and_running_sessions_count_up_to_now():
    now = at("2026-11-20T06:00:00")
    older = session("ada", "2026-11-01T00:00:00", "2026-11-18T01:00:00")  # starts before the window
    running = session("ada", "2026-11-19T23:00:00")
    cpu = session("ada", "2026-11-19T10:00:00", "2026-11-19T12:00:00", gpus=0)
    days = dict(usage.daily_gpu_hours([older, running, cpu], now=now, days=3))
    assert days == {
        date(2026, 11, 18): Decimal(1),  # only the part inside the window
        date(2026, 11, 19): Decimal(1),  # CPU-only sessions have no GPU-hours
        date(2026, 11, 20): Decimal(6),
    }


def test_month_totals_start_at_midnight_utc_on_the_first():
    now = at("2026-12-01T02:00:00")
    assert usage.month_start(now) == at("2026-12-01T00:00:00")
    across = session("ada", "2026-11-30T23:00:00", "2026-12-01T01:00:00", price="3.60")
    this_month = usage.totals([across], now=now, since=usage.month_start(now))
    assert this_month.gpu_hours == Decimal(1)
    assert this_month.charges == {"USD": Decimal("3.60")}
    assert this_month.sessions == 1
    last_month = usage.totals([across], now=now, until=usage.month_start(now))
    assert last_month.gpu_hours == Decimal(1)
    # a month in a time zone east of UTC still starts at UTC midnight
    assert usage.month_start(datetime(2026, 12, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))) == (
        at("2026-11-01T00:00:00")
    )


def test_totals_agree_with_the_report_and_merge_currencies_per_user():
    now = at("2026-11-20T12:00:00")
    sessions = [
        session("ada", "2026-11-01T10:00:00", "2026-11-01T11:00:07", price="2.49"),
        session("ada", "2026-11-02T10:00:00", "2026-11-02T10:30:00", currency="EUR"),
        session("bob", "2026-11-03T10:00:00", gpus=2),
    ]
    by_user = usage.totals_by_user(sessions, now=now)
    report = usage_by_user(sessions, now=now)
    assert by_user["ada"].charges == {
        row.currency: row.charges for row in report if row.user == "ada"
    }
    assert by_user["ada"].sessions == 2 and by_user["ada"].running == 0
    assert by_user["bob"].running == 1
    everyone = usage.totals(sessions, now=now)
    assert everyone.gpu_hours == sum(s.gpu_seconds(now) for s in sessions) / 3600
    assert everyone.charges == {
        "USD": sessions[0].charge(now) + sessions[2].charge(now),
        "EUR": sessions[1].charge(now),
    }


def test_user_table_lists_everyone_with_zero_outside_the_range_and_sorts():
    now = at("2026-11-20T12:00:00")
    sessions = [
        session("ada", "2026-10-01T10:00:00", "2026-10-01T12:00:00"),
        session("bob", "2026-11-10T10:00:00", "2026-11-10T11:00:00"),
        session("cy", "2026-11-11T10:00:00", "2026-11-11T10:30:00", gpus=4),
        session("dee", "2026-11-19T10:00:00"),
    ]
    in_range = usage.totals_by_user(sessions, now=now, since=at("2026-11-01T00:00:00"))
    last_active = {s.user: s.end(now) for s in sessions}
    rows = usage.user_table(in_range, last_active)
    assert [row.user for row in rows] == ["ada", "bob", "cy", "dee"]
    assert rows[0].totals == usage.Totals() and rows[0].last_active == at("2026-10-01T12:00:00")
    assert rows[3].last_active == now  # running
    assert rows[2].totals == in_range["cy"]
    by_hours = usage.sort_users(rows, "gpu_hours", descending=True, currency="USD")
    assert [row.user for row in by_hours] == ["dee", "cy", "bob", "ada"]
    by_active = usage.sort_users(rows, "last_active", descending=False, currency="USD")
    assert [row.user for row in by_active] == ["ada", "bob", "cy", "dee"]
    by_name = usage.sort_users(rows, "user", descending=True, currency="USD")
    assert [row.user for row in by_name] == ["dee", "cy", "bob", "ada"]
    with pytest.raises(ValueError, match="use one of user, gpu_hours"):
        usage.sort_users(rows, "cost", descending=True, currency="USD")


def test_ties_keep_name_order_both_ways():
    now = at("2026-11-20T12:00:00")
    sessions = [session(u, "2026-11-10T10:00:00", "2026-11-10T11:00:00") for u in "cab"]
    rows = usage.user_table(
        usage.totals_by_user(sessions, now=now), {s.user: s.end(now) for s in sessions}
    )
    for descending in (True, False):
        ordered = usage.sort_users(rows, "charges", descending=descending, currency="USD")
        assert [row.user for row in ordered] == ["a", "b", "c"]


# --- utilization ---------------------------------------------------------------------


def test_average_utilization_weighs_minutes_by_samples():
    minutes = [
        minute("2026-11-20T10:00:00", 120, 50.0),  # two GPUs at 90 % and 10 %
        minute("2026-11-20T10:01:00", 20, 50.0),
        minute("2026-11-20T10:02:00", 60, 0.0),
    ]
    assert usage.average_utilization(minutes) == pytest.approx((6000 + 1000) / 200)
    assert usage.average_utilization([]) is None
    assert usage.average_utilization([minute("2026-11-20T10:00:00", 0, 0.0)]) is None


def test_utilization_series_is_per_minute_and_at_most_the_points_asked():
    minutes = [minute(f"2026-11-20T10:{m:02d}:00", 60, float(m)) for m in range(10)]
    assert usage.utilization_series(minutes[::-1]) == [float(m) for m in range(10)]
    assert usage.utilization_series(minutes, points=5) == [0.5, 2.5, 4.5, 6.5, 8.5]
    assert len(usage.utilization_series(minutes, points=3)) == 3
    assert usage.utilization_series([minute("2026-11-20T10:00:00", 0, 0.0)]) == []


# --- one session and the export -----------------------------------------------------


def test_session_usage_is_the_whole_session_and_json_has_iso_times_and_money():
    now = at("2026-11-20T12:00:00")
    s = session("ada", "2026-11-20T10:00:00", "2026-11-20T10:00:07", price="2.49")
    item = usage.session_usage(s, now=now, minutes=[minute("2026-11-20T10:00:00", 7, 73.0)])
    data = item.to_json()
    assert data["started_at"] == "2026-11-20T10:00:00Z"
    assert data["ended_at"] == "2026-11-20T10:00:07Z"
    # 2.49 * 7 / 3600: exact to 6 places, and as the pages show it
    assert data["charge"] == {"amount": "0.004842", "currency": "USD", "text": "0.00 USD"}
    assert data["duration_text"] == "7 s" and data["started_at_text"] == "2026-11-20 10:00 UTC"
    assert data["utilization_avg_text"] == "73%"
    assert s.charge(now) == Decimal("2.49") * 7 / 3600
    assert data["gpu_hours"] == "0.001944"
    assert data["utilization_avg"] == 73.0
    assert data["duration_s"] == 7.0 and data["running"] is False


def test_export_rows_bill_the_part_inside_the_range_at_the_sessions_price():
    now = at("2026-12-05T00:00:00")
    across = session("=cmd", "2026-11-30T23:00:00", "2026-12-01T01:00:00", price="3.60")
    rows = usage.export_rows(
        [across], now=now, since=at("2026-11-01T00:00:00"), until=at("2026-12-01T00:00:00")
    )
    (row,) = rows
    assert list(row) == list(usage.EXPORT_COLUMNS)
    assert row["billed_from"] == "2026-11-30T23:00:00Z"
    assert row["billed_until"] == "2026-12-01T00:00:00Z"
    assert row["ended_at"] == "2026-12-01T01:00:00Z"
    assert row["charge"] == "3.600000" and row["gpu_hours"] == "1.000000"
    assert row["billed_seconds"] == 3600
    assert usage.export_rows([across], now=now, since=at("2026-12-02T00:00:00")) == []


def test_billed_seconds_are_what_is_charged_for_rounded_up_to_the_increment():
    now = at("2026-12-05T00:00:00")
    short = session("ada", "2026-12-01T00:00:00", "2026-12-01T00:01:01.5", increment=60)
    (row,) = usage.export_rows([short], now=now)
    assert row["billed_seconds"] == 120  # 61.5 s, billed per started minute
    assert row["gpu_hours"] == usage.decimal_string(Decimal("61.5") / 3600)  # GPU time: exact
    assert Decimal(row["charge"]) == (Decimal("2.49") * 120 / 3600).quantize(Decimal("1e-6"))


# --- arguments and pages --------------------------------------------------------------


def test_paginate_gives_the_slice_the_total_and_where_the_next_page_starts():
    items = list(range(7))
    first = query.paginate(items, limit=3, offset=0)
    assert (first.items, first.total, first.next_offset) == ([0, 1, 2], 7, 3)
    last = query.paginate(items, limit=3, offset=6)
    assert (last.items, last.next_offset) == ([6], None)
    beyond = query.paginate(items, limit=3, offset=10)
    assert (beyond.items, beyond.total, beyond.next_offset) == ([], 7, None)
    assert query.paginate(items, limit=0, offset=0).to_json()["next_offset"] == 0
    everything = []
    page = query.paginate(items, limit=2, offset=0)
    while True:
        everything += page.items
        if page.next_offset is None:
            break
        page = query.paginate(items, limit=2, offset=page.next_offset)
    assert everything == items


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-01", at("2026-11-01T00:00:00")),
        ("2026-11-01T10:00:00Z", at("2026-11-01T10:00:00")),
        ("2026-11-01T12:00:00+02:00", at("2026-11-01T10:00:00")),
        ("2026-11-01T10:00", at("2026-11-01T10:00:00")),
        ("", None),
        (None, None),
    ],
)
def test_times_parse_as_iso_8601_utc(text, expected):
    assert query.parse_time(text, "since") == expected


def test_bad_arguments_say_what_is_allowed():
    with pytest.raises(query.UsageArgumentError, match="since='yesterday' is not an ISO 8601"):
        query.parse_time("yesterday", "since")
    with pytest.raises(query.UsageArgumentError, match="is not before until"):
        query.parse_range("2026-11-02", "2026-11-01")
    with pytest.raises(query.UsageArgumentError, match="limit='-1' is not a whole number from 0"):
        query.parse_count("-1", "limit", default=25, maximum=1000)
    with pytest.raises(query.UsageArgumentError, match="limit='5000'"):
        query.parse_count("5000", "limit", default=25, maximum=1000)
    with pytest.raises(query.UsageArgumentError, match="offset='x' is not a whole number from 0"):
        query.parse_count("x", "offset", default=0)
    with pytest.raises(query.UsageArgumentError, match="sort='cost' is not one of: a, b"):
        query.parse_choice("cost", "sort", ("a", "b"), "a")
    assert query.parse_count(None, "limit", default=25, maximum=1000) == 25


def test_times_and_counts_beyond_what_datetime_and_databases_hold_are_refused():
    assert query.parse_time("0001-01-01", "since") == datetime(1, 1, 1, tzinfo=timezone.utc)
    assert query.parse_time("9999-12-31T23:59:59.999999Z", "until") == datetime.max.replace(
        tzinfo=timezone.utc
    )
    for text in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-00:01"):
        with pytest.raises(
            query.UsageArgumentError,
            match=r"is not a time from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z",
        ):
            query.parse_time(text, "since")
    for text in ("0000-01-01", "10000-01-01", "99999-01-01T00:00:00Z"):
        with pytest.raises(query.UsageArgumentError, match="is not an ISO 8601 date or time"):
            query.parse_time(text, "since")
    assert query.parse_count("2147483647", "offset", default=0) == query.MAX_COUNT
    for text in ("2147483648", str(10**30), "9" * 5000):
        with pytest.raises(query.UsageArgumentError, match="is not a whole number from 0 to 2147"):
            query.parse_count(text, "offset", default=0)


def test_spawn_form_prices_per_profile_model_and_cpu():
    from jupyter_gpu_meter.choice import parse_profiles

    pricing = Pricing(prices={H100: "2.49", "NVIDIA L4": "0.8"}, cpu_price="0.0125", currency="EUR")
    profiles = parse_profiles(
        [
            {"display_name": "CPU", "slug": "cpu"},
            {"display_name": "2 H100", "slug": "h2", "gpus": 2, "gpu_model": H100},
            {"display_name": "any", "slug": "any", "gpus": 1},
        ]
    )
    prices = spawn_prices(profiles, [H100, "NVIDIA L4"], pricing)
    assert prices["profiles"] == {
        "cpu": "0.0125 EUR/hour",
        "h2": "4.98 EUR/hour",
        "any": "from 0.80 EUR/hour",
    }
    assert prices["models"] == {H100: "2.49 EUR/GPU-hour", "NVIDIA L4": "0.80 EUR/GPU-hour"}
    free = spawn_prices(profiles[:1], [], Pricing())
    assert free["profiles"] == {"cpu": "no charge"}
