"""Query arguments of the pages and the API, and pages of long lists.

Each parser raises :class:`UsageArgumentError` with a message that says what
is allowed; the handlers answer it as a 400. Times are read by the usage
core's one parser (:func:`jupyter_gpu_meter.usage.parse_time`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from ..usage import parse_time as _parse_time

#: the largest count (offset) a query may give: what every database's LIMIT/OFFSET takes
MAX_COUNT = 2**31 - 1


class UsageArgumentError(ValueError):
    """A query argument that cannot be used; the message says what is allowed."""


def parse_time(text: str | None, name: str) -> datetime | None:
    """The query argument `name` as an aware UTC time; None if empty (see
    :func:`jupyter_gpu_meter.usage.parse_time`)."""
    try:
        return _parse_time(text)
    except ValueError as e:
        raise UsageArgumentError(f"{name}={e}") from None


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
    """One of `choices` from a query argument; `default` if empty."""
    if text is None or not text.strip():
        return default
    if text.strip() not in choices:
        raise UsageArgumentError(f"{name}={text!r} is not one of: {', '.join(choices)}")
    return text.strip()


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
