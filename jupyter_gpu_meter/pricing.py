"""Prices and charges. Pure: plain data in, exact ``Decimal`` out.

A session is charged from the :class:`PriceSnapshot` taken when it started
(the spawner puts it on the container as labels, the ledger stores it with
the session), so a price change never rewrites history. Money is ``Decimal``
everywhere; :func:`charge` never rounds; amounts are parsed, rounded and written
for people by the usage core (:mod:`jupyter_gpu_meter.usage.money`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Context, Decimal

from traitlets import Any, Dict, Int, Unicode, validate
from traitlets.config import LoggingConfigurable

from . import labels

# the money words live in the usage core; these names stay importable from here
from .usage.money import (  # noqa: F401
    MONEY_LIMIT,
    MONEY_PLACES,
    minor_unit,
    parse_money,
    round_money,
)

#: prefix of the container labels that carry the price in force when a server started
LABEL_PREFIX = labels.PREFIX + "price."

#: arithmetic for charges: the precision of Python's default context, whatever the caller's is
_CONTEXT = Context(prec=28)
_MICROSECONDS = 1_000_000
#: microseconds in an hour: GPU-microseconds / this = GPU-hours
MICROSECONDS_PER_HOUR = 3600 * _MICROSECONDS


def parse_currency(value) -> str:
    """An ISO 4217 code, upper case; raises ValueError with an example."""
    code = value.strip().upper() if isinstance(value, str) else value
    if not isinstance(code, str) or not re.fullmatch(r"[A-Z]{3}", code):
        raise ValueError(f"currency {value!r} is not an ISO 4217 code: use e.g. 'USD' or 'EUR'")
    return code


@dataclass(frozen=True)
class PriceSnapshot:
    """The prices in force when a session started: what it is charged at, for good."""

    #: the GPUs' model, "" for a CPU-only server
    gpu_model: str
    #: how many whole GPUs, 0 for a CPU-only server
    gpus: int
    #: per GPU and hour, for GPU sessions
    price_per_gpu_hour: Decimal
    #: per hour, for CPU-only sessions
    cpu_price_per_hour: Decimal
    #: ISO 4217 code, e.g. "USD"
    currency: str = "USD"
    #: time is billed in whole multiples of this many seconds, rounded up
    billing_increment_s: int = 1
    #: the least a session with any duration costs
    minimum_charge: Decimal = Decimal(0)
    #: per kWh of the session's GPUs' energy; 0: energy is not charged
    energy_price_per_kwh: Decimal = Decimal(0)

    def __post_init__(self):
        # frozen: normalise through object.__setattr__
        for name in _AMOUNTS:
            object.__setattr__(self, name, parse_money(getattr(self, name), name))
        object.__setattr__(self, "currency", parse_currency(self.currency))
        for name, least in (("gpus", 0), ("billing_increment_s", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")

    @property
    def hourly_rate(self) -> Decimal:
        """What one hour of this session costs: GPUs × GPU price, or the CPU price."""
        if self.gpus:
            return _CONTEXT.multiply(self.price_per_gpu_hour, Decimal(self.gpus))
        return self.cpu_price_per_hour

    def to_labels(self) -> dict[str, str]:
        """Flat string labels, ``jupyter-gpu-meter.price.<field>``, for a Docker container."""
        return {_label(field.name): str(getattr(self, field.name)) for field in fields(self)}

    @classmethod
    def from_labels(cls, container_labels: dict) -> PriceSnapshot:
        """The snapshot back from a container's labels (other labels are ignored).

        Raises ValueError naming the missing or malformed label.
        """
        values = {}
        for field in fields(cls):
            key = _label(field.name)
            if key not in (container_labels or {}):
                if field.name in _LABELS_ADDED_LATER:
                    continue  # an older container's: the field's default
                raise ValueError(f"container label {key!r} is missing: no price snapshot")
            values[field.name] = container_labels[key]
        for name in ("gpus", "billing_increment_s"):
            try:
                values[name] = int(values[name])
            except ValueError:
                raise ValueError(
                    f"container label {_label(name)!r} is {values[name]!r}, not a whole number"
                ) from None
        return cls(**values)


#: the snapshot's amounts of money
_AMOUNTS = ("price_per_gpu_hour", "cpu_price_per_hour", "minimum_charge", "energy_price_per_kwh")
#: labels containers started by older versions lack: they read as the field's default
_LABELS_ADDED_LATER = frozenset({"energy_price_per_kwh"})


def _label(name: str) -> str:
    return LABEL_PREFIX + name.replace("_", "-")


class Pricing(LoggingConfigurable):
    """What GPU and CPU time costs; shared by the spawner (snapshots) and the meter (charges).

    Amounts are decimal strings (``"2.49"``), ints or ``Decimal``; floats are
    accepted and read through their shortest repr, so ``2.49`` means 2.49.
    """

    prices = Dict(
        key_trait=Unicode(),
        help="""
        Price per GPU-hour by GPU model name, as NVML reports it, e.g.
        ``{"NVIDIA H100 80GB HBM3": "2.49", "NVIDIA L4": "0.80"}``.
        A server with 2 GPUs is charged twice the price. Models not listed
        cost ``default_price``.
        """,
    ).tag(config=True)

    @validate("prices")
    def _check_prices(self, proposal):
        checked = {}
        for model, price in proposal.value.items():
            if not model.strip():
                raise ValueError(
                    "Pricing.prices: a GPU model name is empty; use the name NVML reports, "
                    "e.g. 'NVIDIA H100 80GB HBM3'"
                )
            checked[model] = parse_money(price, f"Pricing.prices[{model!r}]")
        return checked

    default_price = Any(
        Decimal(0),
        help="""
        Price per GPU-hour for GPU models not in ``prices``, e.g. ``"1.99"``.
        Default 0: GPUs of unlisted models are free.
        """,
    ).tag(config=True)

    cpu_price = Any(
        Decimal(0),
        help='Price per hour of a CPU-only server (no GPU), e.g. ``"0.05"``. Default 0.',
    ).tag(config=True)

    minimum_charge = Any(
        Decimal(0),
        help="""
        The least a session costs once it has run at all, e.g. ``"0.10"``.
        Default 0: no minimum.
        """,
    ).tag(config=True)

    storage_price = Any(
        Decimal(0),
        help="""
        Price of storage per GB-month, e.g. ``"0.10"``: users' homes and
        snapshots, measured by the meter every ``c.MeterService.storage_interval``.
        A GB is 10**9 bytes and a month 730 hours (AWS's convention), so
        10 GB for one hour at 0.10 costs 10 × 0.10 / 730. Default 0: storage
        is free, but still measured and shown.
        """,
    ).tag(config=True)

    energy_price = Any(
        Decimal(0),
        help="""
        Price per kWh of the energy a server's GPUs use, e.g. ``"0.30"``, in
        ``currency``. The meter reads each GPU's energy counter (NVML's total
        energy, in millijoules) and charges a session the energy its GPUs used
        while it held them: 2 kWh at 0.30 costs 0.60, on top of the GPU time.
        The price in force when a server starts is the one it pays. Default 0:
        energy is not charged, but still measured and shown.
        """,
    ).tag(config=True)

    @validate("default_price", "cpu_price", "minimum_charge", "storage_price", "energy_price")
    def _check_amount(self, proposal):
        return parse_money(proposal.value, f"Pricing.{proposal.trait.name}")

    currency = Unicode(
        "USD",
        help='ISO 4217 code of the currency all amounts are in, e.g. ``"USD"`` or ``"EUR"``.',
    ).tag(config=True)

    @validate("currency")
    def _check_currency(self, proposal):
        try:
            return parse_currency(proposal.value)
        except ValueError as e:
            raise ValueError(f"Pricing.{e}") from None

    billing_increment = Int(
        1,
        help="""
        Time is billed in whole multiples of this many seconds, rounded up.
        1 (the default) bills per second; 60 bills per started minute.
        """,
    ).tag(config=True)

    @validate("billing_increment")
    def _check_increment(self, proposal):
        if proposal.value < 1:
            raise ValueError(
                f"Pricing.billing_increment {proposal.value!r} must be at least 1 second: "
                "use 1 to bill per second or 60 to bill per started minute"
            )
        return proposal.value

    def price_per_gpu_hour(self, gpu_model: str) -> Decimal:
        return self.prices.get(gpu_model, self.default_price)

    def snapshot(self, gpu_model: str, gpus: int) -> PriceSnapshot:
        """The prices in force now for `gpus` GPUs of `gpu_model` (0 and "" for CPU only)."""
        return PriceSnapshot(
            gpu_model=gpu_model if gpus else "",
            gpus=gpus,
            price_per_gpu_hour=self.price_per_gpu_hour(gpu_model) if gpus else Decimal(0),
            cpu_price_per_hour=self.cpu_price,
            currency=self.currency,
            billing_increment_s=self.billing_increment,
            minimum_charge=self.minimum_charge,
            energy_price_per_kwh=self.energy_price,
        )


def _microseconds(started_at: datetime, ended_at: datetime) -> int:
    """Length of [started_at, ended_at] in microseconds, 0 if it ends before it starts."""
    for name, value in (("started_at", started_at), ("ended_at", ended_at)):
        if value.tzinfo is None:
            raise ValueError(
                f"{name} {value!r} is naive: pass timezone-aware UTC times, "
                "e.g. jupyter_gpu_meter.clock.utcnow()"
            )
    return max((ended_at - started_at) // timedelta(microseconds=1), 0)


def billable_seconds(started_at: datetime, ended_at: datetime, increment_s: int = 1) -> int:
    """Seconds billed for [started_at, ended_at]: rounded up to `increment_s`, 0 if empty."""
    if increment_s < 1:
        raise ValueError(f"increment_s must be at least 1 second, got {increment_s!r}")
    increment_us = increment_s * _MICROSECONDS
    return -(-_microseconds(started_at, ended_at) // increment_us) * increment_s


#: a charge is an exact whole number of these parts of the currency's unit: prices
#: have 6 places and time is billed in whole seconds, so price per hour x 10**6 x
#: billed seconds is a whole number, the charge x 3,600 x 10**6
CHARGE_UNITS = 3600 * 10**MONEY_PLACES
_CHARGE_UNITS = Decimal(CHARGE_UNITS)


def gpu_microseconds(snapshot: PriceSnapshot, started_at: datetime, ended_at: datetime) -> int:
    """GPUs × microseconds of [started_at, ended_at]: GPU time as an exact whole number."""
    return _microseconds(started_at, ended_at) * snapshot.gpus


def gpu_seconds(snapshot: PriceSnapshot, started_at: datetime, ended_at: datetime) -> Decimal:
    """GPUs × exact seconds (to the microsecond), not rounded to the billing increment."""
    return _CONTEXT.divide(Decimal(gpu_microseconds(snapshot, started_at, ended_at)), _MICROSECONDS)


def charge_units(snapshot: PriceSnapshot, started_at: datetime, ended_at: datetime) -> int:
    """What [started_at, ended_at] costs, in :data:`CHARGE_UNITS` parts of the currency.

    The definition of a charge: GPU sessions are charged GPUs × price per
    GPU-hour × billable seconds / 3600, CPU-only sessions the CPU price per hour
    likewise, and at least the minimum charge once the session has any
    duration; nothing for none. Whole numbers add up exactly, in Python and in
    SQL, which is how totals over many sessions stay exact.
    """
    seconds = billable_seconds(started_at, ended_at, snapshot.billing_increment_s)
    if not seconds:
        return 0
    rate = int(snapshot.hourly_rate.scaleb(MONEY_PLACES))  # exact: prices have 6 places
    minimum = int(snapshot.minimum_charge.scaleb(MONEY_PLACES)) * 3600
    return max(rate * seconds, minimum)


#: the largest whole number a database's BIGINT holds
_BIGINT_MAX = 2**63 - 1


def session_sums(
    snapshot: PriceSnapshot, started_at: datetime, ended_at: datetime
) -> tuple[int | None, int | None]:
    """(:func:`gpu_microseconds`, :func:`charge_units`) of a closed session, as the ledger
    stores them: both None where either is beyond 64 bits (a charge of over 2.5
    billion), so the session is priced from its snapshot instead."""
    gpu_us = gpu_microseconds(snapshot, started_at, ended_at)
    units = charge_units(snapshot, started_at, ended_at)
    if gpu_us > _BIGINT_MAX or units > _BIGINT_MAX:
        return None, None
    return gpu_us, units


def from_charge_units(units: int) -> Decimal:
    """:data:`CHARGE_UNITS` parts as an amount, to 28 significant digits."""
    return _CONTEXT.divide(Decimal(units), _CHARGE_UNITS)


def from_gpu_microseconds(microseconds: int) -> Decimal:
    """GPU-microseconds as GPU-hours, to 28 significant digits."""
    return _CONTEXT.divide(Decimal(microseconds), Decimal(MICROSECONDS_PER_HOUR))


def charge(snapshot: PriceSnapshot, started_at: datetime, ended_at: datetime) -> Decimal:
    """What [started_at, ended_at] costs at `snapshot`'s prices (see :func:`charge_units`)."""
    return from_charge_units(charge_units(snapshot, started_at, ended_at))


# --- storage -------------------------------------------------------------------------

#: bytes in a GB: storage is priced per 10**9 bytes, as disks and clouds count them
BYTES_PER_GB = 10**9
#: hours in a month of storage pricing: 730 (365 days × 24 / 12), AWS's convention
HOURS_PER_MONTH = 730
#: a storage charge is kept as a whole number of these parts of the currency's unit
STORAGE_CHARGE_UNITS = 10**12
#: GB-hours are kept as a whole number of byte-hours (10**-9 GB-hours)
_BYTE_US_PER_BYTE_HOUR = MICROSECONDS_PER_HOUR
#: byte-microseconds x price in millionths that make one STORAGE_CHARGE_UNIT
_STORAGE_DIVISOR = BYTES_PER_GB * HOURS_PER_MONTH * MICROSECONDS_PER_HOUR * 10**MONEY_PLACES


def _check_size(size_bytes) -> int:
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or size_bytes < 0:
        raise ValueError(f"size_bytes must be a whole number of bytes >= 0, got {size_bytes!r}")
    return size_bytes


def storage_charge(
    size_bytes: int, started_at: datetime, ended_at: datetime, price_per_gb_month
) -> Decimal:
    """What keeping `size_bytes` over [started_at, ended_at] costs at `price_per_gb_month`.

    bytes / 10**9 × hours / 730 × price, to 28 significant digits (the 730
    makes most amounts recurring decimals: no finite decimal is exact).
    Not rounded: people see it through :func:`~jupyter_gpu_meter.usage.format_money`.
    """
    price = parse_money(price_per_gb_month, "price_per_gb_month")
    byte_us = _check_size(size_bytes) * _microseconds(started_at, ended_at)
    return _CONTEXT.divide(
        _CONTEXT.multiply(Decimal(byte_us), price), Decimal(_STORAGE_DIVISOR // 10**MONEY_PLACES)
    )


def storage_gb_hours(size_bytes: int, started_at: datetime, ended_at: datetime) -> Decimal:
    """GB-hours of keeping `size_bytes` over [started_at, ended_at], to 28 digits."""
    byte_us = _check_size(size_bytes) * _microseconds(started_at, ended_at)
    return _CONTEXT.divide(Decimal(byte_us), Decimal(BYTES_PER_GB * _BYTE_US_PER_BYTE_HOUR))


def storage_units(
    size_bytes: int, started_at: datetime, ended_at: datetime, price_per_gb_month
) -> tuple[int, int]:
    """(byte-hours, charge in :data:`STORAGE_CHARGE_UNITS` parts) of keeping `size_bytes`
    over [started_at, ended_at], each rounded half up to a whole number.

    Whole numbers add up exactly, in Python and in SQL. Rounding to 10**-12
    of the currency per period: a billion periods drift by less than a
    thousandth of a cent.
    """
    price_millionths = int(parse_money(price_per_gb_month).scaleb(MONEY_PLACES))
    byte_us = _check_size(size_bytes) * _microseconds(started_at, ended_at)
    byte_hours = _divide_half_up(byte_us, _BYTE_US_PER_BYTE_HOUR)
    units = _divide_half_up(byte_us * price_millionths * STORAGE_CHARGE_UNITS, _STORAGE_DIVISOR)
    return byte_hours, units


def storage_sums(
    size_bytes: int, started_at: datetime, ended_at: datetime, price_per_gb_month
) -> tuple[int | None, int | None]:
    """:func:`storage_units` as the ledger stores them: both None where either is
    beyond 64 bits (then added up from the period's own values instead)."""
    byte_hours, units = storage_units(size_bytes, started_at, ended_at, price_per_gb_month)
    if byte_hours > _BIGINT_MAX or units > _BIGINT_MAX:
        return None, None
    return byte_hours, units


def _divide_half_up(numerator: int, denominator: int) -> int:
    quotient, remainder = divmod(numerator, denominator)
    return quotient + (2 * remainder >= denominator)


def from_storage_units(units: int) -> Decimal:
    """:data:`STORAGE_CHARGE_UNITS` parts as an amount (exact: 10**-12 is a finite decimal)."""
    return Decimal(units).scaleb(-12)


def from_byte_hours(byte_hours: int) -> Decimal:
    """Byte-hours as GB-hours (exact)."""
    return Decimal(byte_hours).scaleb(-9)


# --- energy --------------------------------------------------------------------------

#: millijoules in a kWh: 3.6 × 10**6 J
MILLIJOULES_PER_KWH = 3_600_000_000


def _check_energy(energy_mj) -> int:
    if isinstance(energy_mj, bool) or not isinstance(energy_mj, int) or energy_mj < 0:
        raise ValueError(f"energy_mj must be a whole number of millijoules >= 0, got {energy_mj!r}")
    return energy_mj


def energy_kwh(energy_mj: int) -> Decimal:
    """Millijoules as kWh, to 28 significant digits (mJ / 3,600,000,000)."""
    return _CONTEXT.divide(Decimal(_check_energy(energy_mj)), Decimal(MILLIJOULES_PER_KWH))


def energy_units(energy_mj: int, price_per_kwh) -> int:
    """What `energy_mj` costs at `price_per_kwh`, in :data:`CHARGE_UNITS` parts, half up.

    mJ / 3.6 × 10**9 × price × 3.6 × 10**9 parts: the energy in mJ × the price
    in millionths / 10**6, so the only rounding is below a millionth of a
    millionth of the currency per session. Whole numbers add up exactly.
    """
    price_millionths = int(parse_money(price_per_kwh, "price_per_kwh").scaleb(MONEY_PLACES))
    return _divide_half_up(_check_energy(energy_mj) * price_millionths, 10**MONEY_PLACES)


def energy_charge(energy_mj: int, price_per_kwh) -> Decimal:
    """What `energy_mj` costs at `price_per_kwh` (:func:`energy_units` as an amount)."""
    return from_charge_units(energy_units(energy_mj, price_per_kwh))
