"""Prices and charges: pure, exact Decimal arithmetic."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from traitlets.config import Config

from jupyter_gpu_meter.pricing import (
    CHARGE_UNITS,
    LABEL_PREFIX,
    PriceSnapshot,
    Pricing,
    billable_seconds,
    charge,
    charge_units,
    energy_charge,
    energy_kwh,
    energy_units,
    from_charge_units,
    gpu_microseconds,
    gpu_seconds,
    round_money,
    session_sums,
)

H100 = "NVIDIA H100 80GB HBM3"
T0 = datetime(2026, 11, 27, 16, 0, 0, tzinfo=timezone.utc)


def after(seconds=0, microseconds=0):
    return T0 + timedelta(seconds=seconds, microseconds=microseconds)


def snapshot(**overrides):
    values = dict(
        gpu_model=H100,
        gpus=1,
        price_per_gpu_hour=Decimal("2.49"),
        cpu_price_per_hour=Decimal("0.05"),
    )
    return PriceSnapshot(**{**values, **overrides})


@pytest.mark.parametrize(
    "length, increment, billed",
    [
        (timedelta(0), 1, 0),
        (timedelta(microseconds=1), 1, 1),
        (timedelta(seconds=1), 1, 1),
        (timedelta(seconds=1, microseconds=1), 1, 2),
        (timedelta(seconds=20), 1, 20),
        (timedelta(microseconds=1), 60, 60),
        (timedelta(seconds=60), 60, 60),
        (timedelta(seconds=61), 60, 120),
        (timedelta(hours=2, seconds=59, microseconds=999_999), 60, 7260),
        (timedelta(seconds=-5), 60, 0),
    ],
)
def test_billable_seconds_round_up_to_the_increment(length, increment, billed):
    assert billable_seconds(T0, T0 + length, increment) == billed


def test_one_h100_for_20_seconds_is_exact():
    amount = charge(snapshot(), T0, after(20))
    assert amount == Decimal("2.49") * 20 / 3600
    assert str(amount).startswith("0.0138333333333")
    assert isinstance(amount, Decimal)


def test_charges_are_exact_whatever_the_callers_decimal_context():
    import decimal

    with decimal.localcontext(decimal.Context(prec=3)):
        amount = charge(snapshot(), T0, after(20))
    assert amount == Decimal("0.01383333333333333333333333333")


def test_gpus_multiply_the_gpu_price():
    assert charge(snapshot(gpus=4), T0, after(3600)) == Decimal("9.96")
    assert charge(snapshot(gpus=2), T0, after(90)) == Decimal("0.1245")


def test_per_started_minute():
    per_minute = snapshot(billing_increment_s=60, price_per_gpu_hour=Decimal("3.00"))
    assert charge(per_minute, T0, after(1)) == Decimal("0.05")
    assert charge(per_minute, T0, after(60)) == Decimal("0.05")
    assert charge(per_minute, T0, after(61)) == Decimal("0.10")


def test_cpu_only_pays_the_cpu_price_not_a_gpu_price():
    cpu = snapshot(gpus=0, gpu_model="", price_per_gpu_hour=Decimal("2.49"))
    assert charge(cpu, T0, after(7200)) == Decimal("0.10")


def test_minimum_charge_applies_once_the_session_has_run():
    with_minimum = snapshot(minimum_charge=Decimal("0.25"))
    assert charge(with_minimum, T0, T0) == 0
    assert charge(with_minimum, T0, after(microseconds=1)) == Decimal("0.25")
    assert charge(with_minimum, T0, after(3600)) == Decimal("2.49")


def test_gpu_seconds_are_exact_and_not_rounded_to_the_increment():
    two = snapshot(gpus=2, billing_increment_s=60)
    assert gpu_seconds(two, T0, after(1, 500_000)) == Decimal("3.000000")
    assert gpu_seconds(two, T0, after(microseconds=1)) == Decimal("0.000002")
    assert gpu_seconds(two, after(10), T0) == 0


@pytest.mark.parametrize(
    "prices, length",
    [
        (dict(gpus=2), after(90)),
        (dict(billing_increment_s=60), after(61)),
        (dict(minimum_charge=Decimal("0.25")), after(microseconds=1)),
        (dict(gpus=0, gpu_model=""), after(7200)),
        (dict(), T0),
    ],
)
def test_charges_are_whole_numbers_of_charge_units(prices, length):
    """Many sessions' charges add up exactly (in SQL too) as whole charge units."""
    units = charge_units(snapshot(**prices), T0, length)
    assert isinstance(units, int)
    assert Decimal(units) / CHARGE_UNITS == charge(snapshot(**prices), T0, length)
    assert charge_units(snapshot(gpus=3), T0, after(7)) == 3 * 2_490_000 * 7
    assert gpu_microseconds(snapshot(gpus=3), T0, after(7)) == 21_000_000


def test_sums_beyond_what_a_database_bigint_holds_are_not_stored():
    cheap = snapshot(gpus=8)
    assert session_sums(cheap, T0, after(3600)) == (8 * 3600 * 10**6, 8 * 2_490_000 * 3600)
    dear = snapshot(gpus=8, price_per_gpu_hour=Decimal("999999999999"))
    assert session_sums(dear, T0, after(10**6)) == (None, None)  # stored together or not at all


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="naive: pass timezone-aware UTC times"):
        charge(snapshot(), T0.replace(tzinfo=None), after(1))


def test_non_utc_zones_are_the_same_instant():
    cet = timezone(timedelta(hours=1))
    assert charge(snapshot(), T0, after(20).astimezone(cet)) == charge(snapshot(), T0, after(20))


def test_pricing_snapshot_uses_the_models_price_or_the_default():
    pricing = Pricing(
        prices={H100: "2.49", "NVIDIA L4": 1},
        default_price=0.8,
        cpu_price="0.05",
        currency="eur",
        billing_increment=60,
        minimum_charge=Decimal("0.10"),
    )
    assert pricing.snapshot(H100, 2) == PriceSnapshot(
        H100, 2, Decimal("2.49"), Decimal("0.05"), "EUR", 60, Decimal("0.10")
    )
    assert pricing.snapshot("NVIDIA L4", 1).price_per_gpu_hour == Decimal(1)
    assert pricing.snapshot("NVIDIA A100", 1).price_per_gpu_hour == Decimal("0.8")
    cpu = pricing.snapshot("", 0)
    assert (cpu.gpus, cpu.gpu_model, cpu.price_per_gpu_hour) == (0, "", 0)


def test_pricing_from_config_strings():
    config = Config()
    config.Pricing.prices = {H100: "2.49"}
    config.Pricing.default_price = "1.5"
    pricing = Pricing(config=config)
    assert pricing.prices == {H100: Decimal("2.49")}
    assert pricing.default_price == Decimal("1.5")


def test_defaults_are_free_per_second_usd():
    pricing = Pricing()
    assert pricing.snapshot(H100, 1) == PriceSnapshot(
        H100, 1, Decimal(0), Decimal(0), "USD", 1, Decimal(0)
    )


def test_floats_are_read_through_their_repr():
    assert Pricing(default_price=2.49).default_price == Decimal("2.49")
    assert Pricing(prices={H100: 0.1}).prices[H100] == Decimal("0.1")


@pytest.mark.parametrize(
    "trait, value, message",
    [
        ("default_price", "-1", r"Pricing.default_price '-1' is not allowed: use a non-neg"),
        ("cpu_price", float("nan"), r"Pricing.cpu_price nan is not a number.*e.g. 2.49"),
        ("minimum_charge", "Infinity", r"is not a number.*e.g. 2.49"),
        ("default_price", "two", r"Pricing.default_price 'two' is not a number.*e.g. 2.49"),
        ("default_price", True, r"True is not a number"),
        ("default_price", [1], r"\[1\] is not a number"),
        ("default_price", "0.0000001", r"has more than 6 decimal places"),
        ("default_price", "1e12", r"is too large: it must be below 1,000,000,000,000"),
        ("prices", {H100: "-2"}, r"Pricing.prices\['NVIDIA H100 80GB HBM3'\] '-2' is not allowed"),
        ("prices", {" ": "2"}, r"a GPU model name is empty.*e.g. 'NVIDIA H100 80GB HBM3'"),
        ("currency", "dollars", r"Pricing.currency 'dollars' is not an ISO 4217 code.*'USD'"),
        ("currency", "US1", r"not an ISO 4217 code: use e.g. 'USD' or 'EUR'"),
        ("billing_increment", 0, r"at least 1 second: use 1 to bill per second or 60"),
        ("energy_price", "-0.30", r"Pricing.energy_price '-0.30' is not allowed.*e.g. 2.49"),
        ("energy_price", "0.0000001", r"Pricing.energy_price .* more than 6 decimal places"),
    ],
)
def test_bad_settings_say_how_to_fix_them(trait, value, message):
    with pytest.raises(ValueError, match=message):
        Pricing(**{trait: value})


def test_trailing_zeros_beyond_six_places_are_fine():
    assert Pricing(default_price="2.490000000").default_price == Decimal("2.49")


def test_negative_zero_is_zero():
    assert str(Pricing(default_price="-0").default_price) == "0"


def test_labels_round_trip():
    original = snapshot(
        gpus=2, currency="JPY", billing_increment_s=60, minimum_charge=Decimal("100")
    )
    labels = original.to_labels()
    assert all(key.startswith(LABEL_PREFIX) for key in labels)
    assert all(isinstance(value, str) for value in labels.values())
    assert labels[LABEL_PREFIX + "price-per-gpu-hour"] == "2.49"
    assert labels[LABEL_PREFIX + "billing-increment-s"] == "60"
    other = {"jupyter-gpu-meter.user": "alice", **labels}
    assert PriceSnapshot.from_labels(other) == original


def test_labels_missing_or_malformed_are_named():
    labels = snapshot().to_labels()
    del labels[LABEL_PREFIX + "currency"]
    with pytest.raises(ValueError, match=r"'jupyter-gpu-meter.price.currency' is missing"):
        PriceSnapshot.from_labels(labels)
    labels = {**snapshot().to_labels(), LABEL_PREFIX + "gpus": "two"}
    with pytest.raises(ValueError, match=r"'jupyter-gpu-meter.price.gpus' is 'two', not a whole"):
        PriceSnapshot.from_labels(labels)
    labels = {**snapshot().to_labels(), LABEL_PREFIX + "price-per-gpu-hour": "-1"}
    with pytest.raises(ValueError, match=r"price_per_gpu_hour '-1' is not allowed"):
        PriceSnapshot.from_labels(labels)


def test_snapshot_fields_are_checked():
    with pytest.raises(ValueError, match="gpus must be a whole number >= 0"):
        snapshot(gpus=-1)
    with pytest.raises(ValueError, match="billing_increment_s must be a whole number >= 1"):
        snapshot(billing_increment_s=0)
    assert snapshot(price_per_gpu_hour="2.49").price_per_gpu_hour == Decimal("2.49")


@pytest.mark.parametrize(
    "amount, currency, shown",
    [
        ("0.0138333", "USD", "0.01"),
        ("0.005", "USD", "0.01"),
        ("0.00499", "EUR", "0.00"),
        ("1234.5", "JPY", "1235"),
        ("1.0005", "KWD", "1.001"),
        ("7", "usd", "7.00"),
    ],
)
def test_round_money_to_the_minor_unit(amount, currency, shown):
    assert str(round_money(Decimal(amount), currency)) == shown


# --- energy ----------------------------------------------------------------------------


def test_energy_in_kwh_is_exact():
    assert energy_kwh(3_600_000_000) == 1
    assert energy_kwh(0) == 0
    assert energy_kwh(1_800_000) == Decimal("0.0005")
    # a recurring decimal: 28 significant digits
    assert energy_kwh(1) == Decimal(1) / Decimal(3_600_000_000)


def test_energy_charge_in_charge_units_half_up():
    # 2 kWh at 0.30: 0.60
    assert energy_charge(7_200_000_000, "0.30") == Decimal("0.6")
    assert energy_units(7_200_000_000, "0.30") == Decimal("0.6") * CHARGE_UNITS
    # units are mJ x price in millionths / 10**6: 1 mJ at 0.500000 is half a unit, up
    assert energy_units(1, "0.5") == 1
    assert energy_units(1, "0.499999") == 0
    assert energy_units(3, "0.5") == 2  # 1.5 -> 2
    assert energy_units(10**15, "0") == 0
    assert energy_charge(1, "0.5") == from_charge_units(1)


@pytest.mark.parametrize(
    "energy, price, message",
    [
        (-1, "0.30", "energy_mj must be a whole number of millijoules >= 0, got -1"),
        (1.5, "0.30", "got 1.5"),
        (True, "0.30", "got True"),
        (1, "-1", "price_per_kwh '-1' is not allowed"),
    ],
)
def test_bad_energy_is_refused(energy, price, message):
    with pytest.raises(ValueError, match=message):
        energy_units(energy, price)


def test_the_energy_price_is_in_the_snapshot_and_its_labels():
    pricing = Pricing(prices={H100: "2.49"}, energy_price="0.30", currency="EUR")
    taken = pricing.snapshot(H100, 1)
    assert taken.energy_price_per_kwh == Decimal("0.30")
    assert pricing.snapshot("", 0).energy_price_per_kwh == Decimal("0.30")  # CPU only too
    labels = taken.to_labels()
    assert labels[LABEL_PREFIX + "energy-price-per-kwh"] == "0.30"
    assert PriceSnapshot.from_labels(labels) == taken
    assert Pricing().energy_price == 0  # energy is not charged by default


def test_an_older_containers_labels_have_no_energy_price_and_read_as_zero():
    labels = snapshot(energy_price_per_kwh="0.30").to_labels()
    del labels[LABEL_PREFIX + "energy-price-per-kwh"]
    assert PriceSnapshot.from_labels(labels).energy_price_per_kwh == 0
    labels[LABEL_PREFIX + "energy-price-per-kwh"] = "cheap"
    with pytest.raises(ValueError, match=r"energy_price_per_kwh 'cheap' is not a number"):
        PriceSnapshot.from_labels(labels)
