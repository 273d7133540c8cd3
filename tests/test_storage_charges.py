"""Storage prices and charges: pure arithmetic, no Docker, no database."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jupyter_gpu_meter import pricing
from jupyter_gpu_meter.budgets import budget_status
from jupyter_gpu_meter.ledger import BudgetRecord, StorageSum
from jupyter_gpu_meter.pricing import (
    Pricing,
    round_money,
    storage_charge,
    storage_gb_hours,
    storage_sums,
    storage_units,
)

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
GB = 10**9


def test_a_gb_for_a_730_hour_month_costs_the_price():
    assert storage_charge(GB, T0, T0 + timedelta(hours=730), "0.10") == Decimal("0.10")
    assert storage_gb_hours(GB, T0, T0 + timedelta(hours=730)) == 730


def test_ten_gb_for_an_hour_at_ten_cents_a_gb_month():
    amount = storage_charge(10 * GB, T0, T0 + timedelta(hours=1), "0.10")
    assert amount == Decimal(1) / Decimal(730)  # 10 x 0.10 / 730, to 28 digits
    assert round_money(amount, "USD") == Decimal("0.00")
    assert round_money(amount * 730, "USD") == Decimal("1.00")


def test_nothing_for_no_time_no_bytes_or_a_free_price():
    assert storage_charge(GB, T0, T0, "0.10") == 0
    assert storage_charge(0, T0, T0 + timedelta(days=1), "0.10") == 0
    assert storage_charge(GB, T0, T0 + timedelta(days=1), "0") == 0
    assert storage_charge(GB, T0 + timedelta(days=1), T0, "0.10") == 0  # never negative


@pytest.mark.parametrize("size", [-1, 1.5, True, "10"])
def test_a_size_is_a_whole_number_of_bytes(size):
    with pytest.raises(ValueError, match="whole number of bytes"):
        storage_charge(size, T0, T0 + timedelta(hours=1), "0.10")


def test_naive_times_are_refused():
    with pytest.raises(ValueError, match="naive"):
        storage_charge(GB, T0.replace(tzinfo=None), T0.replace(tzinfo=None), "0.10")


@given(
    size=st.integers(0, 10**15),
    microseconds=st.integers(0, 10**13),
    price=st.decimals(0, 1000, places=6),
)
def test_whole_units_match_the_charge_to_a_trillionth(size, microseconds, price):
    end = T0 + timedelta(microseconds=microseconds)
    byte_hours, units = storage_units(size, T0, end, price)
    exact = storage_charge(size, T0, end, price)
    assert abs(pricing.from_storage_units(units) - exact) <= Decimal("0.5e-12")
    assert abs(pricing.from_byte_hours(byte_hours) - storage_gb_hours(size, T0, end)) <= Decimal(
        "0.5e-9"
    )


@given(
    size=st.integers(0, 10**14),
    cuts=st.lists(st.integers(1, 10**10), min_size=1, max_size=6),
    price=st.decimals(0, 100, places=6),
)
def test_splitting_a_time_into_periods_charges_the_same(size, cuts, price):
    times = [T0]
    for cut in cuts:
        times.append(times[-1] + timedelta(microseconds=cut))
    whole = storage_charge(size, times[0], times[-1], price)
    parts = sum(storage_charge(size, a, b, price) for a, b in zip(times, times[1:], strict=False))
    assert abs(parts - whole) <= whole * Decimal("1e-25") + Decimal("1e-25")


def test_sums_beyond_64_bits_are_left_to_python():
    assert storage_sums(10**18, T0, T0 + timedelta(days=3650), "999") == (None, None)
    byte_hours, units = storage_units(10**18, T0, T0 + timedelta(days=3650), "999")
    assert units > 2**63


def test_storage_price_is_validated_like_the_gpu_prices():
    assert Pricing().storage_price == 0
    assert Pricing(storage_price="0.10").storage_price == Decimal("0.10")
    assert Pricing(storage_price=0.1).storage_price == Decimal("0.1")
    for bad in ("-1", "ten", "0.1234567"):
        with pytest.raises(ValueError, match="Pricing.storage_price"):
            Pricing(storage_price=bad)


def budget(unit, amount="1", currency="USD"):
    return BudgetRecord(
        scope="user",
        name="ada",
        amount=Decimal(amount),
        unit=unit,
        currency=currency if unit == "money" else None,
        period="month",
        updated_at=T0,
        updated_by="admin",
    )


def test_storage_counts_against_money_budgets_only():
    now = T0 + timedelta(hours=100)
    storage = [  # what the ledger adds up over the month so far
        StorageSum("ada", "USD", 730 * 10**9, 10**11),  # 10 GB for 73 hours: 0.10 USD
        StorageSum("ada", "EUR", 1, 10**12),  # another currency: not counted
        StorageSum("bob", "USD", 1, 10**12),  # someone else's
    ]
    money = budget_status(budget("money"), [], [], now=now, storage=storage)
    assert money.spent == Decimal("0.1")
    assert money.remaining == Decimal("0.9")
    hours = budget_status(budget("gpu-hours"), [], [], now=now, storage=storage)
    assert hours.spent == 0
