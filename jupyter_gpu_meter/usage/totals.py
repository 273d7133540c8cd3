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


def usage_by_user(
    sessions: Iterable,
    *,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    sums: Iterable = (),
    storage: Iterable = (),
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
    """
    totals: dict[tuple[str, str], list] = {}
    kept: dict[tuple[str, str], list] = {}
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

    def charge_in(self, currency: str) -> Decimal:
        return self.charges.get(currency, Decimal(0))

    def storage_charge_in(self, currency: str) -> Decimal:
        return self.storage_charges.get(currency, Decimal(0))

    @property
    def total_charges(self) -> dict[str, Decimal]:
        """GPU/CPU time and storage together: what is owed, per currency."""
        return _merge(self.charges, self.storage_charges)

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.sessions + other.sessions,
            self.running + other.running,
            self.gpu_hours + other.gpu_hours,
            _merge(self.charges, other.charges),
            self.storage_gb_hours + other.storage_gb_hours,
            _merge(self.storage_charges, other.storage_charges),
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
            "total_charges": charges_list(self.total_charges),
            "total_charges_text": format_charges(self.total_charges, currency),
        }


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
) -> dict[str, Totals]:
    """Totals per user over [since, until): :func:`usage_by_user` (of `sessions`, the
    ledger's `sums` and `storage` sums), its currencies merged."""
    result: dict[str, Totals] = {}
    rows = usage_by_user(sessions, now=now, since=since, until=until, sums=sums, storage=storage)
    for row in rows:
        part = Totals(
            row.sessions,
            row.running,
            row.gpu_hours,
            {row.currency: row.charges} if row.sessions else {},
            row.storage_gb_hours,
            {row.currency: row.storage_charges} if row.storage_gb_hours else {},
        )
        result[row.user] = result[row.user] + part if row.user in result else part
    return result


def totals(
    sessions: Iterable, *, now: datetime, since=None, until=None, sums=(), storage=()
) -> Totals:
    """Everyone's totals over [since, until)."""
    result = Totals()
    parts = totals_by_user(
        sessions, now=now, since=since, until=until, sums=sums, storage=storage
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
USER_SORT_KEYS = ("user", "gpu_hours", "charges", "last_active", "sessions")


def sort_users(
    rows: Sequence[UserTotals], key: str, *, descending: bool, currency: str
) -> list[UserTotals]:
    """`rows` sorted by one of :data:`USER_SORT_KEYS`, ties by user name (always ascending).

    Charges sort by the amount in `currency` (the configured one).
    """
    if key not in USER_SORT_KEYS:
        raise ValueError(f"sort key {key!r}: use one of {', '.join(USER_SORT_KEYS)}")
    value = {
        "user": lambda row: row.user,
        "gpu_hours": lambda row: row.totals.gpu_hours,
        "charges": lambda row: row.totals.charge_in(currency),
        "last_active": lambda row: row.last_active or datetime.min.replace(tzinfo=timezone.utc),
        "sessions": lambda row: row.totals.sessions,
    }[key]
    # sorted() is stable, reversed too: equal values stay in name order
    return sorted(sorted(rows, key=lambda row: row.user), key=value, reverse=descending)
