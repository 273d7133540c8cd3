"""Sessions clipped to a range and added up: per user, per currency, for everyone. Pure.

Plain data in (ledger :class:`~jupyter_gpu_meter.ledger.SessionRecord` and
:class:`~jupyter_gpu_meter.ledger.UsageSum` objects, a `now`), plain data out.
Every total the pages, the API, the CSV's sum, ``jupyter-gpu-meter report``
and budgets give comes from :func:`clip` and :func:`usage_by_user` here, at the
prices of :mod:`jupyter_gpu_meter.pricing`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

from .. import pricing
from .efficiency import add_known, busy_hours, busy_share, format_energy, format_share, idle
from .money import charges_list, decimal_string, format_charges, format_quantity


def clip(
    session, *, now: datetime, since: datetime | None = None, until: datetime | None = None
) -> tuple[datetime, datetime] | None:
    """The part of `session` inside [since, until), running ones up to `now`; None if none.

    `session` has ``started_at`` and ``ended_at`` (None while it runs).
    """
    start = max(session.started_at, since) if since else session.started_at
    end = session.ended_at or now
    if until:
        end = min(end, until)
    return (start, end) if end > start else None


@dataclass(frozen=True)
class UserUsage:
    """One user's usage in one currency: a line of ``jupyter-gpu-meter report``."""

    user: str
    sessions: int
    running: int
    gpu_hours: Decimal
    charges: Decimal
    currency: str
    #: homes and snapshots kept: GB-hours and their charge (not in `charges`)
    storage_gb_hours: Decimal = Decimal(0)
    storage_charges: Decimal = Decimal(0)
    #: busy GPU-hours (rollup minutes in the range); None without any GPU sample
    busy_gpu_hours: Decimal | None = None
    #: the GPUs' energy, kWh; None when no GPU reported an energy counter
    energy_kwh: Decimal | None = None
    #: the energy's charge at each session's energy price (not in `charges`)
    energy_charges: Decimal = Decimal(0)

    @property
    def idle_gpu_hours(self) -> Decimal | None:
        """GPU-hours paid for and not busy: GPU-hours − busy, never negative."""
        return idle(self.gpu_hours, self.busy_gpu_hours)


def usage_by_user(
    sessions: Iterable,
    *,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    sums: Iterable = (),
    storage: Iterable = (),
    efficiency: Iterable = (),
) -> list[UserUsage]:
    """Totals per user and currency over the part of each session inside [since, until).

    Running sessions count up to `now`. Each session is charged at the price
    snapshot it started with, so a later price change never changes it.
    `sums` (:class:`~jupyter_gpu_meter.ledger.UsageSum`) are sessions the
    database already added up, wholly inside the range and not among
    `sessions`: see :meth:`~jupyter_gpu_meter.ledger.Ledger.usage_sums`. GPU
    time and charges add up as whole numbers and are divided once, so the
    totals are the same however the sessions were split. `storage`
    (:class:`~jupyter_gpu_meter.ledger.StorageSum`, already over the range)
    adds each user's storage; a user with storage and no session gets a row.
    `efficiency` (:class:`~jupyter_gpu_meter.ledger.EfficiencySum`, already over
    the range) adds busy GPU-time and energy.
    """
    totals: dict[tuple[str, str], list] = {}
    kept: dict[tuple[str, str], list] = {}
    measured: dict[tuple[str, str], list] = {}
    for part in efficiency:
        entry = measured.setdefault((part.user, part.currency), [None, None, 0])
        entry[0] = add_known(entry[0], part.busy_gpu_ms)
        entry[1] = add_known(entry[1], part.energy_mj)
        entry[2] += part.energy_units
        totals.setdefault((part.user, part.currency), [0, 0, 0, 0])
    for part in storage:
        entry = kept.setdefault((part.user, part.currency), [0, 0])
        entry[0] += part.byte_hours
        entry[1] += part.charge_units
        totals.setdefault((part.user, part.currency), [0, 0, 0, 0])
    for part in sums:
        entry = totals.setdefault((part.user, part.currency), [0, 0, 0, 0])
        entry[0] += part.sessions
        entry[2] += part.gpu_microseconds
        entry[3] += part.charge_units
    for session in sessions:
        span = clip(session, now=now, since=since, until=until)
        if span is None:
            continue
        entry = totals.setdefault((session.user, session.price.currency), [0, 0, 0, 0])
        entry[0] += 1
        entry[1] += session.ended_at is None
        entry[2] += pricing.gpu_microseconds(session.price, *span)
        entry[3] += pricing.charge_units(session.price, *span)
    rows = []
    for (user, currency), (count, running, gpu_us, units) in sorted(totals.items()):
        byte_hours, storage_units = kept.get((user, currency), (0, 0))
        busy_ms, energy_mj, energy_units = measured.get((user, currency), (None, None, 0))
        rows.append(
            UserUsage(
                user,
                count,
                running,
                pricing.from_gpu_microseconds(gpu_us),
                pricing.from_charge_units(units),
                currency,
                pricing.from_byte_hours(byte_hours),
                pricing.from_storage_units(storage_units),
                busy_hours(busy_ms),
                None if energy_mj is None else pricing.energy_kwh(energy_mj),
                pricing.from_charge_units(energy_units),
            )
        )
    return rows


@dataclass(frozen=True)
class Totals:
    """Usage over a range: what a user (or everyone) used and owes."""

    sessions: int = 0
    running: int = 0
    gpu_hours: Decimal = Decimal(0)
    #: currency -> exact amount of GPU and CPU time; one currency unless the
    #: configured one was changed
    charges: dict[str, Decimal] = field(default_factory=dict)
    #: homes and snapshots kept, GB-hours
    storage_gb_hours: Decimal = Decimal(0)
    #: currency -> exact amount for storage (not in `charges`)
    storage_charges: dict[str, Decimal] = field(default_factory=dict)
    #: busy GPU-hours (SM activity or utilization × time); None: no GPU sample at all
    busy_gpu_hours: Decimal | None = None
    #: GPU-hours paid for and not busy (per user: GPU-hours − busy, never negative)
    idle_gpu_hours: Decimal | None = None
    #: the GPUs' energy, kWh; None: no energy reading at all
    energy_kwh: Decimal | None = None
    #: currency -> exact amount for energy (not in `charges`)
    energy_charges: dict[str, Decimal] = field(default_factory=dict)

    @property
    def busy_share(self) -> float | None:
        """Busy GPU-hours / GPU-hours, 0..1; None when unknown."""
        return busy_share(self.busy_gpu_hours, self.gpu_hours)

    def charge_in(self, currency: str) -> Decimal:
        return self.charges.get(currency, Decimal(0))

    def storage_charge_in(self, currency: str) -> Decimal:
        return self.storage_charges.get(currency, Decimal(0))

    def energy_charge_in(self, currency: str) -> Decimal:
        return self.energy_charges.get(currency, Decimal(0))

    @property
    def total_charges(self) -> dict[str, Decimal]:
        """GPU/CPU time, storage and energy together: what is owed, per currency."""
        return _merge(self.charges, self.storage_charges, self.energy_charges)

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.sessions + other.sessions,
            self.running + other.running,
            self.gpu_hours + other.gpu_hours,
            _merge(self.charges, other.charges),
            self.storage_gb_hours + other.storage_gb_hours,
            _merge(self.storage_charges, other.storage_charges),
            add_known(self.busy_gpu_hours, other.busy_gpu_hours),
            add_known(self.idle_gpu_hours, other.idle_gpu_hours),
            add_known(self.energy_kwh, other.energy_kwh),
            _merge(self.energy_charges, other.energy_charges),
        )

    def to_json(self, currency: str) -> dict:
        """The API's totals: exact decimal strings, and ``*_text`` as the pages show them
        (`currency`, the configured one, names a zero)."""
        return {
            "sessions": self.sessions,
            "running": self.running,
            "gpu_hours": decimal_string(self.gpu_hours),
            "gpu_hours_text": format_quantity(self.gpu_hours),
            "charges": charges_list(self.charges),
            "charges_text": format_charges(self.charges, currency),
            "storage": {
                "gb_hours": decimal_string(self.storage_gb_hours),
                "gb_hours_text": format_quantity(self.storage_gb_hours),
                "charges": charges_list(self.storage_charges),
                "charges_text": format_charges(self.storage_charges, currency),
            },
            **self.efficiency_json(currency),
            "total_charges": charges_list(self.total_charges),
            "total_charges_text": format_charges(self.total_charges, currency),
        }

    def efficiency_json(self, currency: str) -> dict:
        """Busy and idle GPU-hours, busy share, energy: exact strings (null: unknown)."""
        share = self.busy_share
        return {
            "busy_gpu_hours": _exact(self.busy_gpu_hours),
            "busy_gpu_hours_text": _hours_text(self.busy_gpu_hours),
            "idle_gpu_hours": _exact(self.idle_gpu_hours),
            "idle_gpu_hours_text": _hours_text(self.idle_gpu_hours),
            "busy_share": None if share is None else round(share, 4),
            "busy_share_text": format_share(share),
            "energy": {
                "kwh": _exact(self.energy_kwh, 9),
                "kwh_text": format_energy(self.energy_kwh),
                "charges": charges_list(self.energy_charges),
                "charges_text": format_charges(self.energy_charges, currency),
            },
        }


def _exact(value: Decimal | None, places: int = 6) -> str | None:
    return None if value is None else decimal_string(value, places)


def _hours_text(value: Decimal | None) -> str:
    return "–" if value is None else format_quantity(value)


def _merge(*amounts: dict[str, Decimal]) -> dict[str, Decimal]:
    merged: dict[str, Decimal] = {}
    for part in amounts:
        for currency, amount in part.items():
            merged[currency] = merged.get(currency, Decimal(0)) + amount
    return merged


@dataclass(frozen=True)
class UserTotals:
    user: str
    totals: Totals
    #: the last time any of the user's sessions ran (`now` while one runs), None without any
    last_active: datetime | None


def totals_by_user(
    sessions: Iterable,
    *,
    now: datetime,
    since=None,
    until=None,
    sums: Iterable = (),
    storage: Iterable = (),
    efficiency: Iterable = (),
) -> dict[str, Totals]:
    """Totals per user over [since, until): :func:`usage_by_user` (of `sessions`, the
    ledger's `sums`, `storage` and `efficiency` sums), its currencies merged."""
    result: dict[str, Totals] = {}
    rows = usage_by_user(
        sessions,
        now=now,
        since=since,
        until=until,
        sums=sums,
        storage=storage,
        efficiency=efficiency,
    )
    for row in rows:
        part = Totals(
            row.sessions,
            row.running,
            row.gpu_hours,
            {row.currency: row.charges} if row.sessions else {},
            row.storage_gb_hours,
            {row.currency: row.storage_charges} if row.storage_gb_hours else {},
            row.busy_gpu_hours,
            row.idle_gpu_hours,
            row.energy_kwh,
            {row.currency: row.energy_charges} if row.energy_charges else {},
        )
        result[row.user] = result[row.user] + part if row.user in result else part
    return result


def totals(
    sessions: Iterable,
    *,
    now: datetime,
    since=None,
    until=None,
    sums=(),
    storage=(),
    efficiency=(),
) -> Totals:
    """Everyone's totals over [since, until)."""
    result = Totals()
    parts = totals_by_user(
        sessions,
        now=now,
        since=since,
        until=until,
        sums=sums,
        storage=storage,
        efficiency=efficiency,
    ).values()
    for part in parts:
        result = result + part
    return result


def user_table(in_range: dict[str, Totals], last_active: dict[str, datetime]) -> list[UserTotals]:
    """Every user in `last_active` (user -> when last active, over all time) or with
    totals in `in_range` (zero when none; storage only: never active), by user name."""
    return [
        UserTotals(user, in_range.get(user, Totals()), last_active.get(user))
        for user in sorted({*last_active, *in_range})
    ]


#: keys the user table sorts by
USER_SORT_KEYS = ("user", "gpu_hours", "charges", "last_active", "sessions", "idle_gpu_hours")


def sort_users(
    rows: Sequence[UserTotals], key: str, *, descending: bool, currency: str
) -> list[UserTotals]:
    """`rows` sorted by one of :data:`USER_SORT_KEYS`, ties by user name (always ascending).

    Charges sort by the amount in `currency` (the configured one); idle GPU-hours
    that are unknown (no GPU sample) sort below every known amount.
    """
    if key not in USER_SORT_KEYS:
        raise ValueError(f"sort key {key!r}: use one of {', '.join(USER_SORT_KEYS)}")
    value = {
        "user": lambda row: row.user,
        "gpu_hours": lambda row: row.totals.gpu_hours,
        "charges": lambda row: row.totals.charge_in(currency),
        "last_active": lambda row: row.last_active or datetime.min.replace(tzinfo=timezone.utc),
        "sessions": lambda row: row.totals.sessions,
        "idle_gpu_hours": lambda row: _known(row.totals.idle_gpu_hours),
    }[key]
    # sorted() is stable, reversed too: equal values stay in name order
    return sorted(sorted(rows, key=lambda row: row.user), key=value, reverse=descending)


def _known(value: Decimal | None) -> Decimal:
    return Decimal(-1) if value is None else value
