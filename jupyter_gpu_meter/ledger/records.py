"""What the ledger returns and accepts: plain frozen dataclasses, not ORM objects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

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
    #: the image it ran, by its display name (an ``allowed_images`` key); "" if unknown
    image: str = ""
    #: the node (Docker engine's name) it ran on; "" on one host
    node: str = ""
    #: why the hub's meter asked for its stop (cluster mode); None: not asked
    stop_reason: str | None = None

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
class UsageSum:
    """Closed sessions of one user in one currency, added up by the database."""

    user: str
    currency: str
    sessions: int
    #: GPUs × microseconds (:func:`jupyter_gpu_meter.pricing.gpu_microseconds`)
    gpu_microseconds: int
    #: the charges, in :data:`jupyter_gpu_meter.pricing.CHARGE_UNITS` parts
    charge_units: int


@dataclass(frozen=True)
class StoragePeriod:
    """One volume's size over one measurement period, at the storage price then in force."""

    user: str
    volume: str
    #: "home" or "snapshot"
    kind: str
    started_at: datetime
    #: when the size was measured
    ended_at: datetime
    size_bytes: int
    price_per_gb_month: Decimal
    currency: str

    def part(self, since: datetime | None, until: datetime | None):
        """(start, end) of the part inside [since, until), None if there is none."""
        start = max(self.started_at, since) if since else self.started_at
        end = min(self.ended_at, until) if until else self.ended_at
        return (start, end) if end > start else None

    def sums(self, since: datetime | None = None, until: datetime | None = None):
        """(byte-hours, charge units) of the part inside [since, until): whole numbers."""
        span = self.part(since, until)
        if span is None:
            return 0, 0
        return pricing.storage_units(self.size_bytes, *span, self.price_per_gb_month)


@dataclass(frozen=True)
class StorageSum:
    """Storage of one user in one currency over a range, added up: whole numbers.

    Per volume and price (an invoice line) where asked for: then `volume`,
    `kind` and `price_per_gb_month` say which.
    """

    user: str
    currency: str
    #: bytes × hours (10**-9 GB-hours)
    byte_hours: int
    #: the charge in :data:`jupyter_gpu_meter.pricing.STORAGE_CHARGE_UNITS` parts
    charge_units: int
    #: the first and last time billed within the range
    billed_from: datetime | None = None
    billed_until: datetime | None = None
    volume: str | None = None
    kind: str | None = None
    price_per_gb_month: Decimal | None = None

    @property
    def gb_hours(self) -> Decimal:
        return pricing.from_byte_hours(self.byte_hours)

    @property
    def charge(self) -> Decimal:
        return pricing.from_storage_units(self.charge_units)


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
    #: busy GPU-time in the minute: busy% / 100 × the time each tick stands for, ms
    busy_ms: int = 0
    #: the GPU's energy in the minute, mJ; None when no reading had an energy counter
    energy_mj: int | None = None
    #: where busy% came from: "utilization" or "sm-activity" (GPM)
    busy_source: str = "utilization"


@dataclass(frozen=True)
class ProcessUsageRow:
    """What one meter process measured of one process group of a session, so far.

    Cumulative since that meter process started: writing it again for the same
    (container, group, writer) replaces it.
    """

    container_id: str
    #: the process name, "unknown" when it could not be read, "other" past the cap
    process_group: str
    writer: str
    samples: int
    #: GPU-time the group held a context on any GPU, ms
    present_ms: int
    #: sm_utilization / 100 × that time, ms (0 when the driver gives no per-process figure)
    busy_ms: int
    #: the group's peak memory on the GPUs at one tick, bytes
    memory_max_bytes: int
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class ProcessGroupUsage:
    """One process group of a session, merged over every writer (sums; max of maxima)."""

    process_group: str
    samples: int
    present_ms: int
    busy_ms: int
    memory_max_bytes: int
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class SessionEfficiency:
    """How much of what a session paid for its GPUs did work, and the energy they used."""

    session_id: int
    #: busy GPU-time over the session's rollups, ms; None when no GPU sample was taken
    busy_gpu_ms: int | None
    #: peak memory of any one of its GPUs, bytes; None if unknown
    memory_max_bytes: int | None
    #: its GPUs' energy, mJ; None when no reading had an energy counter
    energy_mj: int | None
    #: "utilization", "sm-activity", "mixed" (its GPUs differ) or "" (no sample)
    busy_source: str


@dataclass(frozen=True)
class EfficiencySum:
    """One user's busy GPU-time and energy over a range, in one currency."""

    user: str
    busy_gpu_ms: int | None
    energy_mj: int | None
    #: the energy charge in :data:`~jupyter_gpu_meter.pricing.CHARGE_UNITS` parts,
    #: each session priced at its snapshot's energy price
    energy_units: int
    currency: str


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
    #: busy GPU-time, ms, summed over the writers
    busy_ms: int = 0
    #: energy, mJ, summed over the writers; None when none read an energy counter
    energy_mj: int | None = None
    #: "utilization" or "sm-activity" ("mixed" where writers differ; "" where no
    #: writer measured busy time: rows written before ledger revision 0006)
    busy_source: str = "utilization"


class MinuteUtilization(NamedTuple):
    """One minute of a session, its GPUs and writers merged: what pages draw."""

    minute: datetime
    #: readings in the minute, over every GPU
    samples: int
    #: utilization (%) × samples, added up: / samples is the mean
    util_sum: float


class MinuteBusy(NamedTuple):
    """One minute of a session's GPUs, its writers merged: what the policies read in
    cluster mode (:func:`jupyter_gpu_meter.policies.activity_from_minutes`)."""

    minute: datetime
    #: the highest utilization (%) any of its GPUs reached in the minute
    util_max: int
    #: how many of its GPUs have a reading in the minute (a row with samples)
    gpus: int


@dataclass(frozen=True)
class DecisionRecord:
    """What a policy decided about a server, and what came of it."""

    id: int
    at: datetime
    user: str
    server: str
    container_id: str
    #: e.g. "gpu-idle", "max-age", "budget", "keep-alive"
    policy: str
    #: e.g. "stop", "warn", "keep-alive"
    action: str
    #: why, in words shown to the user
    reason: str
    #: True when the meter only said what it would do
    dry_run: bool
    #: what happened, e.g. "stopped", "would stop (dry run)", "failed: <error>"
    outcome: str


@dataclass(frozen=True)
class BudgetRecord:
    """An amount of money or GPU-hours per period, for a user or for each member of a group."""

    #: "user" or "group"
    scope: str
    #: the user or group name
    name: str
    #: per period
    amount: Decimal
    #: "money" or "gpu-hours"
    unit: str
    #: ISO 4217 code for money, None for GPU-hours
    currency: str | None
    #: "month" (calendar month, UTC) or "rolling:<days>"
    period: str
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True)
class BudgetChange:
    """One change to a budget: who made it, when, and how much."""

    id: int
    at: datetime
    #: who made it
    by: str
    scope: str
    name: str
    #: "set", "grant" or "remove"
    change: str
    #: set: the new amount; grant: the extra amount; remove: the amount removed
    amount: Decimal | None
    unit: str | None
    currency: str | None
    period: str | None
    note: str


@dataclass(frozen=True)
class SSHKeyRecord:
    """One of a user's SSH public keys, as the ledger keeps it."""

    id: int
    user: str
    #: ``SHA256:…``, as ``ssh-keygen -lf`` prints it
    fingerprint: str
    key_type: str
    #: ``"<type> <base64 blob>"``: the authorized_keys line without its comment
    public_key: str
    comment: str
    added_at: datetime

    @property
    def line(self) -> str:
        """The authorized_keys line: ``"<type> <blob> <comment>"``."""
        return f"{self.public_key} {self.comment}".rstrip(" ")
