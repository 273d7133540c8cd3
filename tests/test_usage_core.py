"""The usage core: one clip, one money parser and formatter, one duration, one date parser.

Then the property that makes it one core: for random sessions, prices, billing
increments and currencies, the user page, the JSON API, the CSV export, the
report CLI and the budget status give the same totals to the last digit. Each
is driven through its real code (the web app over HTTP, the CLI command, the
ledger's budget status), never a copy of its arithmetic.
"""

import asyncio
import csv
import decimal
import io
import json
import re
import tempfile
from contextlib import redirect_stdout
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_gpu_meter import usage
from jupyter_gpu_meter.budgets import budget_view
from jupyter_gpu_meter.cli.report import ReportCommand
from jupyter_gpu_meter.ledger import Ledger, SessionRecord
from jupyter_gpu_meter.pricing import PriceSnapshot, Pricing
from jupyter_gpu_meter.service.state import MeterState
from tests.test_usage_web import NOW, fetch, serve_app

UTC = timezone.utc
H100 = "NVIDIA H100 80GB HBM3"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- money --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2.49", Decimal("2.49")),
        (" 50 ", Decimal(50)),
        (2.49, Decimal("2.49")),  # through its repr, not the binary approximation
        (7, Decimal(7)),
        (Decimal("-0"), Decimal(0)),
        ("2.490000000", Decimal("2.49")),  # zeros beyond 6 places are fine
        ("999999999999.999999", Decimal("999999999999.999999")),
    ],
)
def test_money_parses_from_text_numbers_and_floats(value, expected):
    assert usage.parse_money(value) == expected


@pytest.mark.parametrize(
    "value, positive, message",
    [
        ("-1", False, "price '-1' is not allowed: use a non-negative number"),
        ("0", True, "price '0' is not allowed: use a positive number"),
        ("ten", False, "price 'ten' is not a number: use a non-negative number with at most 6"),
        ("NaN", False, "is not a number"),
        ("Infinity", False, "is not a number"),
        (True, False, "price True is not a number"),
        ([1], False, r"price \[1\] is not a number"),
        ("1e12", False, "is too large: it must be below 1,000,000,000,000"),
        ("0.0000001", False, "has more than 6 decimal places"),
    ],
)
def test_bad_money_says_what_is_allowed(value, positive, message):
    with pytest.raises(ValueError, match=message):
        usage.parse_money(value, "price", positive=positive)


def test_money_is_parsed_and_rounded_the_same_whatever_the_callers_decimal_context():
    with decimal.localcontext(decimal.Context(prec=3)):
        assert usage.parse_money("1234.5678") == Decimal("1234.5678")
        assert usage.format_money(Decimal("1234.5678"), "USD") == "1,234.57 USD"
        assert usage.format_money(Decimal("0.0125"), "USD", exact=True) == "0.0125 USD"


@pytest.mark.parametrize(
    "amount, currency, text",
    [
        ("1234.565", "USD", "1,234.57 USD"),  # half up
        ("12", "USD", "12.00 USD"),
        ("12", "JPY", "12 JPY"),  # no minor unit: never "12.00"
        ("1234.5", "JPY", "1,235 JPY"),
        ("0.1245", "KWD", "0.125 KWD"),  # three places
        ("0.0005", "BHD", "0.001 BHD"),
        ("0.00004", "CLF", "0.0000 CLF"),
    ],
)
def test_money_for_people_honours_the_currencys_minor_unit(amount, currency, text):
    assert usage.format_money(Decimal(amount), currency) == text
    assert usage.round_money(Decimal(amount), currency) == Decimal(text.split()[0].replace(",", ""))


def test_money_without_code_or_separators_and_exact_prices():
    assert usage.format_money(Decimal("1234.5"), "USD", code=False) == "1,234.50"
    assert usage.format_money(Decimal("1234.5"), "USD", code=False, grouping=False) == "1234.50"
    assert usage.format_money(Decimal("0.0125"), "EUR", exact=True) == "0.0125 EUR"
    assert usage.format_money(Decimal("2.5"), "EUR", exact=True) == "2.50 EUR"
    assert usage.format_money(Decimal("3"), "JPY", exact=True) == "3 JPY"


def test_charges_in_several_currencies_and_none():
    assert usage.format_charges({}, "JPY") == "0 JPY"
    both = {"USD": Decimal("1.005"), "EUR": Decimal(2)}
    assert usage.format_charges(both, "USD") == "2.00 EUR + 1.01 USD"


def test_amounts_of_a_budget_are_money_or_gpu_hours():
    assert usage.format_amount(Decimal("100.5"), "USD") == "100.50 USD"
    assert usage.format_amount(Decimal("100.5"), "JPY", code=False) == "101"
    assert usage.format_amount(Decimal("1.23456"), "GPU-hours") == "1.23 GPU-hours"
    assert usage.format_amount(Decimal("1234.5"), "GPU-hours", places=4, grouping=False) == (
        "1234.5000 GPU-hours"
    )


def test_exact_decimals_for_the_api_and_money_objects_with_their_text():
    assert usage.decimal_string(Decimal("2.49") * 7 / 3600) == "0.004842"
    assert usage.decimal_string(Decimal("0.125"), 2) == "0.13"  # half up, not to even
    assert usage.money(Decimal("1234.5"), "JPY") == {
        "amount": "1234.500000",
        "currency": "JPY",
        "text": "1,235 JPY",
    }
    assert usage.format_quantity(Decimal("1234.565")) == "1,234.57"


# --- durations and dates ------------------------------------------------------------------


@pytest.mark.parametrize(
    "duration, text",
    [
        (timedelta(seconds=42), "42 s"),
        (59.9, "59 s"),
        (-3, "0 s"),
        (timedelta(minutes=30), "30 min"),
        (timedelta(minutes=60, seconds=59), "1 h"),
        (5400, "1 h 30 min"),
        (timedelta(days=1, minutes=5), "1 d 5 min"),
        (timedelta(days=2, hours=3), "2 d 3 h"),
    ],
)
def test_durations_read_like_a_person_writes_them(duration, text):
    assert usage.format_duration(duration) == text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-01", at("2026-11-01T00:00:00")),
        ("2026-11-01T10:00:00Z", at("2026-11-01T10:00:00")),
        ("2026-11-01T12:00:00+02:00", at("2026-11-01T10:00:00")),
        ("2026-11-01T10:00", at("2026-11-01T10:00:00")),  # no offset: UTC
        ("2026-11-27T16:01:02.123456789Z", at("2026-11-27T16:01:02.123456")),  # Docker's
        ("", None),
        ("  ", None),
        (None, None),
    ],
)
def test_times_parse_as_iso_8601_utc(text, expected):
    parsed = usage.parse_time(text)
    assert parsed == expected
    assert parsed is None or parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text, message",
    [
        ("last tuesday", "'last tuesday' is not an ISO 8601 date or time: use ISO 8601, e.g."),
        ("2026-13-01", "is not an ISO 8601 date or time"),
        ("0001-01-01T00:00:00+01:00", "is not a time from 0001-01-01T00:00:00Z to 9999-12-31"),
    ],
)
def test_bad_times_say_how_to_write_one(text, message):
    with pytest.raises(ValueError, match=message):
        usage.parse_time(text)


def test_times_for_machines_and_for_people():
    moment = datetime(2026, 11, 27, 18, 1, 2, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert usage.isoformat(moment) == "2026-11-27T16:01:02.123456Z"
    assert usage.isoformat(None) is None
    assert usage.format_time(moment) == "2026-11-27 16:01 UTC"
    assert usage.format_time(None) == ""
    assert usage.month_start(moment) == at("2026-11-01T00:00:00")
    assert usage.format_percent(72.5) == "72%" and usage.format_percent(None) == "–"


# --- clip and totals ----------------------------------------------------------------------


def session(start, end=None, *, gpus=1, price="3.60", currency="USD", increment=1, minimum="0"):
    started, ended = at(start), at(end) if end else None
    return SessionRecord(
        id=1,
        container_id="c" * 64,
        user="ada",
        server="",
        profile="",
        gpu_uuids=tuple(f"GPU-{i}" for i in range(gpus)),
        gpu_model=H100 if gpus else "",
        price=PriceSnapshot(
            H100 if gpus else "", gpus, price, "0.10", currency, increment, minimum
        ),
        started_at=started,
        ended_at=ended,
        end_reason="stopped" if ended else None,
        last_seen_at=ended or started,
    )


def test_clip_keeps_the_part_inside_the_range_and_running_sessions_up_to_now():
    now = at("2026-11-20T12:00:00")
    done = session("2026-11-01T10:00:00", "2026-11-01T12:00:00")
    since, until = at("2026-11-01T11:00:00"), at("2026-11-01T11:30:00")
    assert usage.clip(done, now=now) == (done.started_at, done.ended_at)
    assert usage.clip(done, now=now, since=since) == (since, done.ended_at)
    assert usage.clip(done, now=now, since=since, until=until) == (since, until)
    assert usage.clip(done, now=now, since=done.ended_at) is None  # touches: nothing inside
    running = session("2026-11-20T11:00:00")
    assert usage.clip(running, now=now) == (running.started_at, now)
    assert usage.clip(running, now=now, until=running.started_at) is None


def test_totals_add_up_per_currency_and_say_it_in_words():
    now = at("2026-11-20T12:00:00")
    usd = session("2026-11-20T10:00:00", "2026-11-20T11:00:00", gpus=2)
    jpy = session("2026-11-20T10:00:00", "2026-11-20T10:30:00", price="500", currency="JPY")
    totals = usage.totals([usd, jpy], now=now)
    assert totals.charges == {"USD": Decimal("7.2"), "JPY": Decimal(250)}
    assert totals.gpu_hours == Decimal("2.5") and totals.sessions == 2
    data = totals.to_json("USD")
    assert data["charges_text"] == "250 JPY + 7.20 USD"
    assert data["gpu_hours_text"] == "2.50"
    assert data["storage"]["charges_text"] == "0.00 USD"
    assert usage.Totals().to_json("JPY")["total_charges_text"] == "0 JPY"


# --- one total, everywhere ----------------------------------------------------------------

CURRENCIES = ["USD", "EUR", "JPY", "KWD", "BHD"]
#: the sessions' range: from three days before the month (clipped away) to NOW
MONTH = usage.month_start(NOW)
EARLIEST = MONTH - timedelta(days=3)
SPAN_US = (NOW - EARLIEST) // timedelta(microseconds=1)


def millionths(most: int):
    return st.integers(0, most).map(lambda n: Decimal(n).scaleb(-6))


prices = st.builds(
    lambda gpu, cpu, minimum, increment: (gpu, cpu, minimum, increment),
    millionths(100 * 10**6),
    millionths(10**6),
    st.sampled_from([Decimal(0), Decimal("0.01"), Decimal("1.5")]) | millionths(10**6),
    st.sampled_from([1, 7, 60, 3600]),
)
sessions = st.lists(
    st.tuples(
        st.integers(0, 4),  # GPUs
        st.integers(0, SPAN_US - 1),  # start, µs after EARLIEST
        st.integers(1, 5 * 86400 * 10**6),  # length, µs (cut at NOW)
        st.booleans(),  # still running
        st.integers(0, 2),  # which of the prices
    ),
    max_size=6,
)


@pytest.fixture(scope="module")
def shared_ledger():
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/ledger.sqlite"
        ledger = Ledger(url)
        ledger.upgrade()
        yield SimpleNamespace(ledger=ledger, url=url, users=iter(range(10**6)))
        ledger.close()


def write_sessions(ledger, user, currency, price_list, drawn) -> None:
    for n, (gpus, start_us, length_us, running, which) in enumerate(drawn):
        gpu_price, cpu_price, minimum, increment = price_list[which % len(price_list)]
        price = PriceSnapshot(
            H100 if gpus else "", gpus, gpu_price, cpu_price, currency, increment, minimum
        )
        started = EARLIEST + timedelta(microseconds=start_us)
        container_id = f"{user}-{n}".rjust(64, "0")
        ledger.open_session(
            container_id=container_id,
            user=user,
            server=f"s{n}",
            gpu_uuids=[f"GPU-{user}-{n}-{i}" for i in range(gpus)],
            gpu_model=price.gpu_model,
            profile="",
            price=price,
            started_at=started,
        )
        if not running:
            ended = min(started + timedelta(microseconds=length_us), NOW)
            ledger.close_session(container_id, ended_at=ended, reason="stopped")


def report_cli(url, user, since, until) -> list[dict]:
    """``jupyter-gpu-meter report --format json``, run in this process."""
    command = ReportCommand(
        db_url=url, user=user, since=usage.isoformat(since), until=usage.isoformat(until)
    )
    command.format = "json"
    out = io.StringIO()
    with redirect_stdout(out):
        command.start()
    return json.loads(out.getvalue())


async def web_views(ledger, user, currency) -> tuple[str, dict, list[dict]]:
    """The user page's HTML, ``api/usage`` and ``api/export.csv`` of this month, for `user`,
    from the real web app at NOW (an admin's token: the user is new every time)."""
    meter = SimpleNamespace(
        ledger=ledger,
        pricing=Pricing(currency=currency),
        state=MeterState(),
        health=lambda: {"gpu_sampling": "off"},
        budget_view=lambda name: budget_view(ledger.user_budget_status(name, [], NOW), 0.8),
    )
    server, app = serve_app(meter)
    try:
        page = (await fetch(app, "?" + urlencode({"user": user}), "admin-token")).body.decode()
        api = json.loads((await fetch(app, "api/usage?user=" + user, "admin-token")).body)
        query = urlencode(
            {"user": user, "since": usage.isoformat(MONTH), "until": usage.isoformat(NOW)}
        )
        export = (await fetch(app, "api/export.csv?" + query, "admin-token")).body.decode()
    finally:
        server.stop()
    return page, api, list(csv.DictReader(io.StringIO(export)))


def shown(page: str, element: str) -> str:
    match = re.search(rf'id="{element}">([^<]*)<', page)
    assert match, f"no #{element} on the page"
    return match.group(1)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    currency=st.sampled_from(CURRENCIES),
    price_list=st.lists(prices, min_size=1, max_size=3),
    drawn=sessions,
)
def test_page_api_csv_report_and_budget_give_the_same_totals(
    shared_ledger, currency, price_list, drawn
):
    ledger, user = shared_ledger.ledger, f"user{next(shared_ledger.users)}"
    write_sessions(ledger, user, currency, price_list, drawn)
    ledger.set_budget(
        scope="user",
        name=user,
        amount="999999999",
        unit="money",
        period="month",
        currency=currency,
        by="test",
        at=EARLIEST,
    )
    page, api, lines = asyncio.run(web_views(ledger, user, currency))
    month = api["this_month"]
    (row,) = report_cli(shared_ledger.url, user, MONTH, NOW) or [None]
    status = ledger.user_budget_status(user, [], NOW)

    # money as people see it: the page, the API's words, the CLI, the invoice, the budget
    texts = {
        "page": shown(page, "month-charges"),
        "api": month["charges_text"],
        "report": usage.format_money(Decimal(row["charges"]), row["currency"]) if row else None,
        "csv": usage.format_money(sum((Decimal(x["charge"]) for x in lines), Decimal(0)), currency),
        "budget": usage.format_money(status.spent, currency),
    }
    if row is None or row["sessions"] == 0:  # nothing this month: the report has no line
        assert not lines and status.spent == 0
        texts["report"] = texts["budget"]
    assert len(set(texts.values())) == 1, texts
    # the exact amounts: the API's and the budget's are the same number
    (charge,) = month["charges"] or [usage.money(Decimal(0), currency)]
    assert charge["amount"] == usage.decimal_string(status.spent)
    assert charge["text"] == texts["budget"]
    # GPU-hours: the page, the API, the report (4 places), the CSV's lines
    assert shown(page, "month-gpu-hours") == month["gpu_hours_text"]
    if row is not None:
        assert row["gpu_hours"] == usage.decimal_string(Decimal(month["gpu_hours"]), 4)
        assert row["sessions"] == month["sessions"] == len(lines)
    # each line's billed seconds are what its charge was computed from
    for line in lines:
        assert int(line["billed_seconds"]) % int(line["billing_increment_s"]) == 0


def test_a_day_for_people_has_no_leading_zero_and_is_the_utc_day():
    assert usage.format_day(datetime(2026, 11, 1, tzinfo=timezone.utc)) == "Nov 1"
    assert usage.format_day(datetime(2026, 12, 24).date()) == "Dec 24"
    # 23:30 on Nov 30 in UTC-2 is Dec 1 in UTC
    minus_two = timezone(timedelta(hours=-2))
    assert usage.format_day(datetime(2026, 11, 30, 23, 30, tzinfo=minus_two)) == "Dec 1"
