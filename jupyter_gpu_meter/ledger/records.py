"""What the ledger returns and accepts: plain frozen dataclasses, not ORM objects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from .. import pricing
from ..pricing import PriceSnapshot


def truncate_to_minute(at: datetime) -> datetime:
    """The start of the minute `at` is in."""
    return at.replace(second=0, microsecond=0)


@dataclass(frozen=True)
class SessionRecord:
    """One server run, as the ledger has it."""

    id: int
    container_id: str
    user: str
    server: str
    gpu_uuids: tuple[str, ...]
    gpu_model: str
    profile: str
    #: the prices in force when it started
    price: PriceSnapshot
    started_at: datetime
    #: None while running
    ended_at: datetime | None
    end_reason: str | None
    #: the last time the meter saw it running
    last_seen_at: datetime

    @property
    def gpu_count(self) -> int:
        return len(self.gpu_uuids)

    @property
    def running(self) -> bool:
        return self.ended_at is None

    def end(self, now: datetime) -> datetime:
        """When it ended, or `now` while it runs."""
        return self.ended_at if self.ended_at is not None else now

    def duration(self, now: datetime) -> timedelta:
        """How long it ran (so far, while running); never negative."""
        return max(self.end(now) - self.started_at, timedelta(0))

    def charge(self, now: datetime) -> Decimal:
        """What it costs (so far), exact; see :func:`jupyter_gpu_meter.pricing.charge`."""
        return pricing.charge(self.price, self.started_at, self.end(now))

    def gpu_seconds(self, now: datetime) -> Decimal:
        """GPUs × seconds (so far), exact to the microsecond."""
        return pricing.gpu_seconds(self.price, self.started_at, self.end(now))


@dataclass(frozen=True)
class RollupRow:
    """What one meter process measured on one GPU of a container within one minute, so far.

    Cumulative: writing the row again for the same (container, GPU, minute,
    writer) replaces it, so a retried write changes nothing.
    """

    container_id: str
    gpu_uuid: str
    #: any time within the minute; stored truncated to the minute
    minute: datetime
    #: the meter process that measured it, e.g. "<hostname>:<pid>:<start time>"
    writer: str
    samples: int
    #: mean utilization over the samples, percent
    util_mean: float
    util_max: int
    memory_max_bytes: int


@dataclass(frozen=True)
class Rollup:
    """One GPU of a session in one minute, merged over every writer of that minute."""

    container_id: str
    gpu_uuid: str
    minute: datetime
    samples: int
    #: sample-weighted mean over the writers, percent (0 with no samples)
    util_mean: float
    util_max: int
    memory_max_bytes: int
    #: how many meter processes wrote to this minute
    writers: int
