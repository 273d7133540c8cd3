"""Storage periods in the ledger, on SQLite and PostgreSQL (see test_ledger.py)."""

from datetime import timedelta
from decimal import Decimal

import pytest

from jupyter_gpu_meter.ledger import StoragePeriod
from jupyter_gpu_meter.pricing import storage_units
from tests import test_ledger
from tests.test_ledger import T0, at

db_url = test_ledger.db_url
clock = test_ledger.clock
make_ledger = test_ledger.make_ledger
ledger = test_ledger.ledger

GB = 10**9


def period(user, volume, start_s, end_s, size=GB, *, price="0.10", currency="USD", kind="home"):
    return StoragePeriod(
        user=user,
        volume=volume,
        kind=kind,
        started_at=at(start_s),
        ended_at=at(end_s),
        size_bytes=size,
        price_per_gb_month=Decimal(price),
        currency=currency,
    )


@pytest.fixture
def stored(ledger):
    """Two users' volumes measured every 600 s, around a range [1000 s, 2000 s)."""
    # an old period in another currency
    ledger.add_storage_periods([period("bob", "old-bob", -600, 0, currency="EUR")], at(0))
    passes = [0, 600, 1200, 1800, 2400]
    for start, end in zip(passes, passes[1:], strict=False):
        periods = [
            period("ada", "home-ada", start, end, size=end * GB),
            period("bob", "home-bob", start, end, size=7 * GB, price="0.20"),
        ]
        if end >= 1800:
            periods.append(period("ada", "snap-ada", start, end, size=3 * GB, kind="snapshot"))
        ledger.add_storage_periods(periods, at(end))
    return ledger


def expected(periods, since, until):
    totals = {}
    for p in periods:
        start = max(p.started_at, since) if since else p.started_at
        end = min(p.ended_at, until) if until else p.ended_at
        if end > start:
            entry = totals.setdefault((p.user, p.currency), [0, 0])
            units = storage_units(p.size_bytes, start, end, p.price_per_gb_month)
            entry[0] += units[0]
            entry[1] += units[1]
    return totals


@pytest.mark.parametrize(
    "since, until",
    [(None, None), (at(1000), None), (None, at(2000)), (at(1000), at(2000)), (at(5000), None)],
)
@pytest.mark.parametrize("user", [None, "ada", "nobody"])
def test_the_database_adds_up_what_each_period_would(stored, since, until, user):
    periods = stored.storage_periods(user=user)
    found = {
        (s.user, s.currency): [s.byte_hours, s.charge_units]
        for s in stored.storage_sums(user=user, since=since, until=until)
    }
    assert found == expected(periods, since, until)


def test_periods_keep_their_price_and_size(stored):
    periods = stored.storage_periods(user="bob", since=at(600), until=at(1200))
    assert [(p.volume, p.size_bytes, p.price_per_gb_month, p.currency) for p in periods] == [
        ("home-bob", 7 * GB, Decimal("0.200000"), "USD"),  # [600, 1200]: its neighbours only touch
    ]
    [whole] = stored.storage_sums(user="bob", since=at(0), until=at(2400))
    assert whole.gb_hours == pytest.approx(Decimal(7 * 2400) / 3600, abs=Decimal("1e-8"))
    charge = Decimal(7 * 2400) / 3600 * Decimal("0.2") / 730
    assert whole.charge == pytest.approx(charge, abs=Decimal("1e-11"))


def test_the_ends_of_each_volume_are_its_last_measurement(stored):
    assert stored.storage_ends(["home-ada", "snap-ada", "old-bob", "gone"]) == {
        "home-ada": at(2400),
        "snap-ada": at(2400),
        "old-bob": at(0),
    }
    many = [f"v{i}" for i in range(1200)]  # more than one query's worth
    assert stored.storage_ends(many) == {}


def test_now_is_the_last_pass_and_leaves_out_deleted_volumes(stored):
    measured_at, now = stored.storage_now()
    assert measured_at == at(2400)
    assert [(p.user, p.volume) for p in now] == [
        ("ada", "home-ada"),
        ("ada", "snap-ada"),
        ("bob", "home-bob"),
    ]
    assert [p.volume for p in stored.storage_now(user="bob")[1]] == ["home-bob"]
    # a pass that finds nothing (every volume deleted): nothing is current
    stored.add_storage_periods([], at(3000))
    assert stored.storage_now() == (at(3000), [])


def test_an_empty_ledger_has_measured_nothing(ledger):
    assert ledger.storage_now() == (None, [])
    assert ledger.storage_sums() == []


def test_a_retried_write_adds_nothing(ledger):
    periods = [period("ada", "home-ada", 0, 600)]
    assert ledger.add_storage_periods(periods, at(600)) == 1
    assert ledger.add_storage_periods(periods, at(600)) == 0
    assert len(ledger.storage_periods()) == 1


def test_bad_periods_are_refused(ledger):
    with pytest.raises(ValueError, match="must end after it starts"):
        ledger.add_storage_periods([period("ada", "v", 600, 600)], at(600))
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.add_storage_periods([], T0.replace(tzinfo=None))
    with pytest.raises(ValueError, match="user"):
        ledger.add_storage_periods([period("", "v", 0, 600)], at(600))


def test_periods_beyond_64_bits_are_added_up_in_python(ledger):
    huge = period("ada", "big", 0, 3600 * 24 * 3650, size=10**18, price="999")
    ledger.add_storage_periods([huge, period("ada", "small", 0, 600)], at(600))
    [total] = ledger.storage_sums()
    units = storage_units(10**18, at(0), huge.ended_at, Decimal(999))[1]
    assert total.charge_units == units + storage_units(GB, at(0), at(600), Decimal("0.1"))[1]


def test_money_budgets_count_storage(ledger):
    ledger.set_budget(
        scope="user",
        name="ada",
        amount="1",
        unit="money",
        currency="USD",
        period="month",
        by="admin",
        at=T0,
    )
    # 10 GB at 0.10 for 73 hours: 0.10 USD
    ledger.add_storage_periods([period("ada", "home-ada", 0, 73 * 3600, size=10 * GB)], at(0))
    status = ledger.user_budget_status("ada", [], T0 + timedelta(hours=75))  # still November
    assert status.spent == Decimal("0.1")
    # the budget's period clips storage: in December, November's home counts nothing
    assert ledger.user_budget_status("ada", [], T0 + timedelta(hours=100)).spent == 0
    gpu_hours = "gpu-hours"
    ledger.set_budget(
        scope="user", name="ada", amount="1", unit=gpu_hours, period="month", by="a", at=T0
    )
    assert ledger.user_budget_status("ada", [], T0 + timedelta(hours=75)).spent == 0


def test_invoice_lines_are_per_volume_and_price_clipped_to_the_range(stored):
    stored.add_storage_periods([period("bob", "home-bob", 2400, 3000, size=7 * GB)], at(3000))
    lines = stored.storage_sums(user="bob", since=at(1000), until=at(2800), by_volume=True)
    assert [
        (s.volume, s.kind, s.price_per_gb_month, s.billed_from, s.billed_until) for s in lines
    ] == [
        ("home-bob", "home", Decimal("0.100000"), at(2400), at(2800)),  # the new price
        ("home-bob", "home", Decimal("0.200000"), at(1000), at(2400)),
    ]
    [whole] = stored.storage_sums(user="bob", since=at(1000), until=at(2800))
    assert whole.charge_units == sum(line.charge_units for line in lines)
