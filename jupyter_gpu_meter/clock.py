"""One clock for the whole package: timezone-aware UTC.

Code that needs the time takes a ``clock`` argument defaulting to
:func:`utcnow`, so tests move the clock instead of sleeping.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """The same instant as timezone-aware UTC; naive values are taken to be UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def parse_docker_time(text: str) -> datetime | None:
    """Docker's RFC 3339 times with nanoseconds ("2026-11-27T16:01:02.123456789Z").

    Truncated to microseconds. Docker's zero time ("0001-01-01T00:00:00Z") is None.
    """
    if not text or text.startswith("0001-01-01"):
        return None
    from .usage.dates import parse_time  # (the usage core's one parser; it builds on this module)

    return parse_time(text)


def check_clock(clock) -> datetime:
    """`clock()`, refused with a ValueError unless it is a timezone-aware UTC datetime."""
    now = clock()
    if not isinstance(now, datetime) or now.utcoffset() != timedelta(0):
        raise ValueError(
            f"the clock {clock!r} returned {now!r}: a clock must return a timezone-aware "
            "UTC datetime, as jupyter_gpu_meter.clock.utcnow() does"
        )
    return now
