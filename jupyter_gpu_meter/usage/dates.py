"""Times' and durations' words: the one parser, the ISO form, the people's forms. Pure.

Every time is timezone-aware UTC (:mod:`jupyter_gpu_meter.clock`); days and
months are UTC days and months.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

from dateutil.parser import isoparse

from ..clock import as_utc

#: how a time may be written, for error messages
TIME_EXAMPLE = "use ISO 8601, e.g. 2026-11-01 or 2026-11-01T00:00:00Z"


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time or date as aware UTC; None for None or blank.

    ``2026-11-01`` is midnight UTC; a time without an offset is UTC; ``Z`` and
    offsets like ``+02:00`` are understood; fractions beyond microseconds
    (Docker's nanoseconds) are cut to microseconds. Raises ValueError that says
    how to write one.
    """
    if text is None or not text.strip():
        return None
    try:
        parsed = isoparse(text.strip())
    except (ValueError, OverflowError):
        raise ValueError(f"{text!r} is not an ISO 8601 date or time: {TIME_EXAMPLE}") from None
    try:
        return as_utc(parsed)
    except OverflowError:  # 0001-01-01T00:00+01:00 is in the year 0 in UTC
        raise ValueError(
            f"{text!r} is not a time from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z"
        ) from None


def isoformat(at: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z``: ``2026-11-27T16:01:02.123456Z``; None stays None."""
    if at is None:
        return None
    return as_utc(at).isoformat().replace("+00:00", "Z")


def format_time(at: datetime | None) -> str:
    """A time for people, to the minute: ``2026-11-27 16:01 UTC``; "" for None."""
    return "" if at is None else f"{as_utc(at):%Y-%m-%d %H:%M} UTC"


def format_day(day: date | datetime) -> str:
    """A day for people, without the year: ``Nov 1``, ``Dec 24`` (a time: its UTC day)."""
    if isinstance(day, datetime):
        day = as_utc(day).date()
    return f"{day:%b} {day.day}"


def format_duration(duration: timedelta | float) -> str:
    """A duration for people (a ``timedelta`` or seconds): ``42 s`` under a minute, else
    whole minutes: ``30 min``, ``1 h``, ``1 h 30 min``, ``2 d 3 h``, ``1 d 5 min``."""
    if isinstance(duration, timedelta):
        duration = duration.total_seconds()
    seconds = int(max(duration, 0))
    if seconds < 60:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    days, hours = divmod(hours, 24)
    parts = [(days, "d"), (hours, "h"), (minutes, "min")]
    return " ".join(f"{value} {unit}" for value, unit in parts if value)


def month_start(now: datetime) -> datetime:
    """Midnight UTC on the first of `now`'s month."""
    now = as_utc(now)
    return datetime(now.year, now.month, 1, tzinfo=timezone.utc)


def day_start(day: date) -> datetime:
    """Midnight UTC at the start of `day`."""
    return datetime.combine(day, time(), timezone.utc)
