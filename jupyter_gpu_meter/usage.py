"""Usage for pages, the API and exports: totals, days, months, utilization, pages. Pure.

Plain data in (ledger :class:`~jupyter_gpu_meter.ledger.SessionRecord` and
:class:`~jupyter_gpu_meter.ledger.Rollup` objects, a `now`), plain data out.
Charges come from :mod:`jupyter_gpu_meter.pricing` and per-user totals from
:func:`jupyter_gpu_meter.report.usage_by_user`, so every number here is the
number the CLI report gives. Days and months are UTC.

Parsing of query arguments (times, limits) lives here too: it raises
:class:`UsageArgumentError` with a message that says what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

from .clock import as_utc
from .pricing import MONEY_PLACES, charge, gpu_seconds, minor_unit
from .report import usage_by_user

_HOUR = Decimal(3600)
#: decimal places of GPU-hours and money in the API and exports
PLACES = MONEY_PLACES
_QUANTUM = Decimal(1).scaleb(-PLACES)
_DAY = timedelta(days=1)
#: the largest count (offset) a query may give: what every database's LIMIT/OFFSET takes
MAX_COUNT = 2**31 - 1


class UsageArgumentError(ValueError):
    """A query argument that cannot be used; the message says what is allowed."""


# --- numbers as the API writes them ---------------------------------------------


def decimal_string(value: Decimal) -> str:
    """`value` rounded half up to 6 places, as a string: ``"1.234500"``."""
    return str(Decimal(value).quantize(_QUANTUM, ROUND_HALF_UP))


def money(amount: Decimal, currency: str) -> dict:
    """``{"amount": "0.123457", "currency": "USD"}``: exact charges rounded to 6 places."""
    return {"amount": decimal_string(amount), "currency": currency}


def charges_list(charges: dict[str, Decimal]) -> list[dict]:
    """Charges per currency as a list of money objects, by currency."""
    return [money(amount, currency) for currency, amount in sorted(charges.items())]


def isoformat(at: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z``: ``2026-11-27T16:01:02.123456Z``; None stays None."""
    if at is None:
        return None
    return as_utc(at).isoformat().replace("+00:00", "Z")


def format_rate(amount: Decimal, currency: str, per: str = "hour") -> str:
    """A price for people: ``2.49 USD/hour``, ``0.0125 USD/hour``; ``no charge`` for 0.

    At least the currency's minor unit of places, more only where the price has them.
    """
    amount = Decimal(amount)
    if not amount:
        return "no charge"
    places = max(minor_unit(currency), -amount.normalize().as_tuple().exponent)
    return f"{amount.quantize(Decimal(1).scaleb(-places)):,} {currency}/{per}"


def spawn_prices(profiles: Sequence, models: Sequence[str], pricing) -> dict:
    """What the spawn form shows: each profile's price per hour, each model's per GPU-hour.

    `pricing` is a :class:`~jupyter_gpu_meter.pricing.Pricing`; a profile without
    a model of its own costs what the one model present costs, or "from" the
    cheapest of them. Returns ``{"profiles": {slug: text}, "models": {model:
    text}, "cpu": text}``.
    """
    currency = pricing.currency

    def rate(model, gpus):
        return pricing.snapshot(model, gpus).hourly_rate

    texts = {}
    for profile in profiles:
        if not profile.gpus:
            texts[profile.slug] = format_rate(rate("", 0), currency)
            continue
        candidates = [profile.gpu_model] if profile.gpu_model else list(models)
        rates = sorted({rate(model, profile.gpus) for model in candidates}) or [
            rate("", profile.gpus)
        ]
        text = format_rate(rates[0], currency)
        texts[profile.slug] = text if len(rates) == 1 else "from " + text
    return {
        "profiles": texts,
        "models": {model: format_rate(rate(model, 1), currency, "GPU-hour") for model in models},
        "cpu": format_rate(rate("", 0), currency),
    }


# --- query arguments --------------------------------------------------------------


def parse_time(text: str | None, name: str) -> datetime | None:
    """An ISO 8601 time or date from a query argument, as aware UTC; None if empty.

    ``2026-11-01`` is midnight UTC; a time without an offset is UTC;
    ``Z`` and offsets like ``+02:00`` are understood.
    """
    if text is None or not text.strip():
        return None
    value = text.strip()
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(), timezone.utc)
        if value.endswith(("Z", "z")):
            value = value[:-1] + "+00:00"
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageArgumentError(
            f"{name}={text!r} is not an ISO 8601 date or time: "
            f"use e.g. {name}=2026-11-01 or {name}=2026-11-01T00:00:00Z"
        ) from None
    try:
        return as_utc(parsed)
    except OverflowError:  # 0001-01-01T00:00+01:00 is in the year 0 in UTC
        raise UsageArgumentError(
            f"{name}={text!r} is not a time from 0001-01-01T00:00:00Z to "
            "9999-12-31T23:59:59.999999Z"
        ) from None


def parse_range(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """The [since, until) range of two query arguments; since must be before until."""
    start, end = parse_time(since, "since"), parse_time(until, "until")
    if start is not None and end is not None and start >= end:
        raise UsageArgumentError(
            f"since={since!r} is not before until={until!r}: the range is [since, until)"
        )
    return start, end


def parse_count(text: str | None, name: str, *, default: int, maximum: int = MAX_COUNT) -> int:
    """A whole number from 0 to `maximum` from a query argument (`limit`, `offset`)."""
    if text is None or not text.strip():
        return default
    allowed = f"a whole number from 0 to {maximum}"
    try:
        value = int(text.strip())
    except ValueError:  # not a number, or more than 4300 digits
        raise UsageArgumentError(f"{name}={text!r} is not {allowed}") from None
    if not 0 <= value <= maximum:
        raise UsageArgumentError(f"{name}={text!r} is not {allowed}")
    return value


def parse_choice(text: str | None, name: str, choices: Sequence[str], default: str) -> str:
    if text is None or not text.strip():
        return default
    if text.strip() not in choices:
        raise UsageArgumentError(f"{name}={text!r} is not one of: {', '.join(choices)}")
    return text.strip()


# --- pagination -------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One page of a longer list: `items` from `offset`, `total` in all."""

    items: list
    total: int
    limit: int
    offset: int

    @property
    def next_offset(self) -> int | None:
        """Where the next page starts, None on the last page."""
        end = self.offset + self.limit
        return end if end < self.total else None

    def to_json(self, convert: Callable = lambda item: item) -> dict:
        return {
            "total": self.total,
            "limit": self.limit,
            "offset": self.offset,
            "next_offset": self.next_offset,
            "items": [convert(item) for item in self.items],
        }


def paginate(items: Sequence, *, limit: int, offset: int) -> Page:
    """`limit` items from `offset` (both >= 0), with the total."""
    if limit < 0 or offset < 0:
        raise ValueError(f"limit {limit!r} and offset {offset!r} must be >= 0")
    return Page(list(items[offset : offset + limit]), len(items), limit, offset)


# --- clipping sessions to a range -----------------------------------------------


def clipped(
    session, *, now: datetime, since: datetime | None = None, until: datetime | None = None
) -> tuple[datetime, datetime] | None:
    """The part of `session` inside [since, until), running ones up to `now`; None if none."""
    start = max(session.started_at, since) if since else session.started_at
    end = session.end(now)
    if until:
        end = min(end, until)
    return (start, end) if end > start else None


# --- totals -------------------------------------------------------------------------


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

    def to_json(self) -> dict:
        return {
            "sessions": self.sessions,
            "running": self.running,
            "gpu_hours": decimal_string(self.gpu_hours),
            "charges": charges_list(self.charges),
            "storage": {
                "gb_hours": decimal_string(self.storage_gb_hours),
                "charges": charges_list(self.storage_charges),
            },
            "total_charges": charges_list(self.total_charges),
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
    """Totals per user over [since, until): :func:`~jupyter_gpu_meter.report.usage_by_user`
    (of `sessions`, the ledger's `sums` and `storage` sums), its currencies merged."""
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


# --- days and months (UTC) -----------------------------------------------------------


def month_start(now: datetime) -> datetime:
    """Midnight UTC on the first of `now`'s month."""
    now = as_utc(now)
    return datetime(now.year, now.month, 1, tzinfo=timezone.utc)


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), timezone.utc)


#: days of the user page's chart
DAILY_DAYS = 30


def daily_start(now: datetime, days: int = DAILY_DAYS) -> datetime:
    """Midnight UTC of the first of the `days` days up to and including `now`'s."""
    return day_start(as_utc(now).date() - timedelta(days=days - 1))


def daily_gpu_hours(
    sessions: Iterable, *, now: datetime, days: int = DAILY_DAYS
) -> list[tuple[date, Decimal]]:
    """GPU-hours per UTC day for the `days` days up to and including today.

    A session that runs across midnight counts on each day for its time on
    that day; running sessions count up to `now`.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days!r}")
    today = as_utc(now).date()
    window_start = daily_start(now, days)
    first = window_start.date()
    hours = {first + timedelta(days=i): Decimal(0) for i in range(days)}
    for session in sessions:
        if not session.price.gpus:
            continue
        span = clipped(session, now=now, since=window_start, until=day_start(today) + _DAY)
        if span is None:
            continue
        start, end = span
        day = start.date()
        while day_start(day) < end:
            part_start = max(start, day_start(day))
            part_end = min(end, day_start(day) + _DAY)
            if part_end > part_start:
                hours[day] += gpu_seconds(session.price, part_start, part_end) / _HOUR
            day += _DAY
    return sorted(hours.items())


# --- one session ---------------------------------------------------------------------


def average_utilization(minutes: Iterable) -> float | None:
    """The sample-weighted mean utilization (%) over every GPU and minute; None without
    samples (no GPU, or GPU sampling off).

    `minutes`: the session's :class:`~jupyter_gpu_meter.ledger.MinuteUtilization`,
    its GPUs merged per minute (:meth:`~jupyter_gpu_meter.ledger.Ledger.utilization_of`).
    """
    samples = weighted = 0
    for minute in minutes:
        samples += minute.samples
        weighted += minute.util_sum
    return weighted / samples if samples else None


def utilization_series(minutes: Iterable, *, points: int = 60) -> list[float]:
    """Mean utilization (%) per minute over the session's GPUs, at most `points` values
    (neighbouring minutes averaged, sample-weighted). Minutes without samples are skipped."""
    counted = [m for m in sorted(minutes, key=lambda m: m.minute) if m.samples]
    if not counted:
        return []
    size = -(-len(counted) // max(points, 1))  # minutes per point, rounded up
    series = []
    for i in range(0, len(counted), size):
        group = counted[i : i + size]
        series.append(sum(m.util_sum for m in group) / sum(m.samples for m in group))
    return series


@dataclass(frozen=True)
class SessionUsage:
    """One session with what it used, for the history and the running list."""

    session: object
    duration_s: float
    gpu_hours: Decimal
    charge: Decimal
    utilization_avg: float | None = None
    utilization: tuple[float, ...] = ()

    def to_json(self) -> dict:
        s = self.session
        return {
            "id": s.id,
            "user": s.user,
            "server": s.server,
            "profile": s.profile,
            "gpu_model": s.gpu_model,
            "gpus": s.gpu_count,
            "gpu_uuids": list(s.gpu_uuids),
            "started_at": isoformat(s.started_at),
            "ended_at": isoformat(s.ended_at),
            "end_reason": s.end_reason,
            "running": s.running,
            "duration_s": round(self.duration_s, 6),
            "gpu_hours": decimal_string(self.gpu_hours),
            "charge": money(self.charge, s.price.currency),
            "price_per_hour": money(s.price.hourly_rate, s.price.currency),
            "utilization_avg": None
            if self.utilization_avg is None
            else round(self.utilization_avg, 2),
            "utilization": [round(value, 1) for value in self.utilization],
        }


def session_usage(session, *, now: datetime, minutes: Sequence | None = None) -> SessionUsage:
    """`session` as it stands at `now` (the whole session, not clipped), with its
    utilization from `minutes` (see :func:`average_utilization`) when given."""
    return SessionUsage(
        session,
        session.duration(now).total_seconds(),
        session.gpu_seconds(now) / _HOUR,
        session.charge(now),
        average_utilization(minutes) if minutes is not None else None,
        tuple(utilization_series(minutes)) if minutes is not None else (),
    )


# --- export --------------------------------------------------------------------------

#: the columns of the CSV export, in order
EXPORT_COLUMNS = (
    "session_id",
    "user",
    "server",
    "profile",
    "gpu_model",
    "gpus",
    "started_at",
    "ended_at",
    "end_reason",
    "billed_from",
    "billed_until",
    "billed_seconds",
    "gpu_hours",
    "price_per_gpu_hour",
    "cpu_price_per_hour",
    "billing_increment_s",
    "minimum_charge",
    "charge",
    "currency",
    # added with storage billing; sessions' lines leave them empty but kind
    "kind",
    "volume",
    "volume_kind",
    "storage_gb_hours",
    "price_per_gb_month",
)
#: ``kind`` of a server session's line and of a volume's storage line
SESSION_LINE, STORAGE_LINE = "session", "storage"


def export_row(session, *, now: datetime, since=None, until=None) -> dict | None:
    """One invoice line: the part of `session` inside [since, until), at its own prices.

    ``billed_from``/``billed_until`` are that part; a running session is billed up
    to `now` and has no ``ended_at``. None when no part is inside the range.
    """
    span = clipped(session, now=now, since=since, until=until)
    if span is None:
        return None
    start, end = span
    price = session.price
    return {
        "session_id": session.id,
        "user": session.user,
        "server": session.server,
        "profile": session.profile,
        "gpu_model": session.gpu_model,
        "gpus": session.gpu_count,
        "started_at": isoformat(session.started_at),
        "ended_at": isoformat(session.ended_at) or "",
        "end_reason": session.end_reason or "",
        "billed_from": isoformat(start),
        "billed_until": isoformat(end),
        "billed_seconds": f"{(end - start).total_seconds():.6f}",
        "gpu_hours": decimal_string(gpu_seconds(price, start, end) / _HOUR),
        "price_per_gpu_hour": decimal_string(price.price_per_gpu_hour),
        "cpu_price_per_hour": decimal_string(price.cpu_price_per_hour),
        "billing_increment_s": price.billing_increment_s,
        "minimum_charge": decimal_string(price.minimum_charge),
        "charge": decimal_string(charge(price, start, end)),
        "currency": price.currency,
        "kind": SESSION_LINE,
        "volume": "",
        "volume_kind": "",
        "storage_gb_hours": "",
        "price_per_gb_month": "",
    }


def storage_row(line) -> dict:
    """One invoice line for a volume kept over the range at one price (a per-volume
    :class:`~jupyter_gpu_meter.ledger.StorageSum`): the session columns stay empty."""
    return {
        **dict.fromkeys(EXPORT_COLUMNS, ""),
        "user": line.user,
        "billed_from": isoformat(line.billed_from),
        "billed_until": isoformat(line.billed_until),
        "charge": decimal_string(line.charge),
        "currency": line.currency,
        "kind": STORAGE_LINE,
        "volume": line.volume,
        "volume_kind": line.kind,
        "storage_gb_hours": decimal_string(line.gb_hours),
        "price_per_gb_month": decimal_string(line.price_per_gb_month),
    }


def export_rows(sessions: Iterable, *, now: datetime, since=None, until=None) -> list[dict]:
    """:func:`export_row` of every session with a part in the range, oldest first."""
    rows = (export_row(s, now=now, since=since, until=until) for s in sessions)
    return [row for row in rows if row is not None]
