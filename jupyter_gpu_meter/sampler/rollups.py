"""Per-minute rollups and process groups (pure): ticks folded into the ledger's rows."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from ..clock import as_utc
from ..ledger.records import ProcessUsageRow, RollupRow, truncate_to_minute
from .readings import GPUReading, Tick

#: busy% came from the GPU's utilization ...
SOURCE_UTILIZATION = "utilization"
#: ... or from GPM's SM activity (Hopper and later)
SOURCE_SM_ACTIVITY = "sm-activity"
#: the group of processes whose name could not be read
UNKNOWN_GROUP = "unknown"
#: the group new names of a session fold into once it has ``max_groups`` - 1 others
OTHER_GROUP = "other"
#: the most characters of a group's name (the ledger's column)
GROUP_MAX_LENGTH = 64


def minute_of(at: datetime) -> datetime:
    """The UTC minute ``at`` falls in (truncated)."""
    return truncate_to_minute(as_utc(at))


def group_name(name: str) -> str:
    """The process group of a process name: as the ledger can store it, "unknown" for ""."""
    name = name.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return name[:GROUP_MAX_LENGTH] or UNKNOWN_GROUP


@dataclass(slots=True)
class _Rollup:
    samples: int = 0
    util_sum: int = 0
    util_max: int = 0
    memory_max_bytes: int = 0
    #: busy ms, not yet rounded
    busy: float = 0.0
    energy_mj: int | None = None
    busy_source: str = SOURCE_UTILIZATION


@dataclass(slots=True)
class _Group:
    first_seen: datetime
    last_seen: datetime
    samples: int = 0
    #: ms, not yet rounded
    present: float = 0.0
    busy: float = 0.0
    memory_max_bytes: int = 0


class RollupAggregator:
    """Folds ticks into per-minute, per-container, per-GPU rows and per-session process
    groups. Pure; owned by whoever calls :meth:`add` (the meter's event loop).

    Rows are cumulative: a minute's row grows as its ticks arrive, and the
    ledger upserts by (session, GPU, minute, writer), so writing a row again is
    harmless. A GPU whose utilization is unknown (None) adds no sample, and its
    memory is not counted either.

    Each tick stands for the time since the previous one (``dt``), at most
    2 × ``interval_s`` (a late or missed tick does not stretch over a gap), the
    first one ``interval_s``. Busy time is busy% / 100 × dt, busy% being the
    GPU's SM activity where GPM gives it, else its utilization.

    Energy: the GPU's counter's delta between two readings counts for the
    container that held the GPU at both (never energy from before a session
    started or after another's began); a reading without a counter is skipped
    (the next good one's delta covers the gap); a counter that went down (the
    driver reloaded) counts its new value, the energy since the reload. Never
    negative.

    Process groups: the processes of managed containers, by name, charged to
    their container's session whatever GPU they ran on; at most
    :attr:`max_groups` per session, later names fold into "other".
    """

    #: the most process groups kept per session, "other" included
    max_groups = 32

    def __init__(self, writer_id: str, interval_s: float = 1.0) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be a number of seconds > 0, got {interval_s!r}")
        self.writer_id = writer_id
        self.interval_s = interval_s
        self._rollups: dict[tuple[str, str, datetime], _Rollup] = {}
        self._current: datetime | None = None
        self._forgotten_before: datetime | None = None
        self._last_at: datetime | None = None
        #: GPU UUID -> (its holder, its counter) at its last reading
        self._energy: dict[str, tuple[str | None, int | None]] = {}
        #: container id -> group name -> its figures
        self._groups: dict[str, dict[str, _Group]] = {}
        #: container id -> process name -> its group's name
        self._labels: dict[str, dict[str, str]] = {}

    def add(
        self, tick: Tick, owners: Mapping[str, str | None], managed: Collection[str] = ()
    ) -> bool:
        """Count the tick's GPUs held by a container (``owners``: GPU UUID -> container id)
        and the processes of the ``managed`` containers (the running metered ones).

        False (and nothing counted) for a tick in a minute already forgotten,
        whose row was written complete: counting it would shrink that row.
        """
        minute = minute_of(tick.at)
        if self._forgotten_before is not None and minute < self._forgotten_before:
            return False
        if self._current is None or minute > self._current:
            self._current = minute
        dt_ms = self._dt_ms(tick.at)
        for gpu in tick.gpus:
            container = owners.get(gpu.uuid)
            energy = self._energy_delta(gpu, container)
            if not container:
                continue
            busy = gpu.sm_activity if gpu.sm_activity is not None else gpu.utilization
            if busy is None and energy is None:
                continue
            key = (container, gpu.uuid, minute)
            rollup = self._rollups.get(key)
            if rollup is None:
                rollup = self._rollups[key] = _Rollup()
            if gpu.utilization is not None:
                rollup.samples += 1
                rollup.util_sum += gpu.utilization
                if gpu.utilization > rollup.util_max:
                    rollup.util_max = gpu.utilization
                if gpu.memory_used_bytes > rollup.memory_max_bytes:
                    rollup.memory_max_bytes = gpu.memory_used_bytes
            if busy is not None:
                rollup.busy += busy * dt_ms / 100
                rollup.busy_source = (
                    SOURCE_UTILIZATION if gpu.sm_activity is None else SOURCE_SM_ACTIVITY
                )
            if energy is not None:
                rollup.energy_mj = (rollup.energy_mj or 0) + energy
        if managed and tick.processes:
            self._add_processes(tick, managed, dt_ms)
        return True

    def _dt_ms(self, at: datetime) -> float:
        """The time the tick at `at` stands for, ms; moves the previous tick's time on."""
        interval_ms = self.interval_s * 1000
        last = self._last_at
        if last is None:
            dt_ms = interval_ms
        else:
            dt_ms = min(max((at - last).total_seconds() * 1000, 0.0), 2 * interval_ms)
        if last is None or at > last:
            self._last_at = at
        return dt_ms

    def _energy_delta(self, gpu: GPUReading, holder: str | None) -> int | None:
        """The energy (mJ) of `gpu` since its previous counted reading, for `holder`;
        None when this reading has no counter. 0 for the first reading of a holder."""
        counter = gpu.energy_mj
        previous = self._energy.get(gpu.uuid)
        if previous is None or previous[0] != holder:
            self._energy[gpu.uuid] = (holder, counter)  # a new holder starts from here
            return None if counter is None else 0
        if counter is None:
            return None  # skipped: the next reading's delta covers the gap
        last = previous[1]
        self._energy[gpu.uuid] = (holder, counter)
        if last is None:
            return 0
        return counter - last if counter >= last else counter

    def _add_processes(self, tick: Tick, managed: Collection[str], dt_ms: float) -> None:
        # this tick's figures per (container, group): (process-GPU pairs, sm% sum, memory)
        seen: dict[tuple[str, str], list] = {}
        labels = self._labels
        for process in tick.processes:
            container = process.container_id
            if container is None or container not in managed:
                continue
            names = labels.get(container)
            label = names.get(process.name) if names is not None else None
            if label is None:
                label = self._label(container, process.name)
            key = (container, label)
            entry = seen.get(key)
            if entry is None:
                entry = seen[key] = [0, 0, 0]
            entry[0] += 1
            if process.sm_utilization is not None:
                entry[1] += process.sm_utilization
            if process.used_memory_bytes:
                entry[2] += process.used_memory_bytes
        at = tick.at
        for (container, label), (pairs, utilization, memory) in seen.items():
            groups = self._groups.setdefault(container, {})
            group = groups.get(label)
            if group is None:
                group = groups[label] = _Group(first_seen=at, last_seen=at)
            group.samples += 1
            group.present += pairs * dt_ms
            group.busy += utilization * dt_ms / 100
            if memory > group.memory_max_bytes:
                group.memory_max_bytes = memory
            if at > group.last_seen:
                group.last_seen = at
            if at < group.first_seen:
                group.first_seen = at

    def _label(self, container: str, name: str) -> str:
        """The group of process `name` in `container`'s session (decided once per name)."""
        names = self._labels.setdefault(container, {})
        label = group_name(name)
        named = {other for other in names.values() if other != OTHER_GROUP}
        if label not in named and len(named) >= self.max_groups - 1:
            label = OTHER_GROUP
        names[name] = label
        return label

    def rows(self, include_current: bool = True) -> list[RollupRow]:
        """Every row kept, by minute; the newest tick's minute only if ``include_current``."""
        return [
            RollupRow(
                container,
                uuid,
                minute,
                self.writer_id,
                rollup.samples,
                rollup.util_sum / rollup.samples if rollup.samples else 0.0,
                rollup.util_max,
                rollup.memory_max_bytes,
                busy_ms=round(rollup.busy),
                energy_mj=rollup.energy_mj,
                busy_source=rollup.busy_source,
            )
            for (container, uuid, minute), rollup in sorted(
                self._rollups.items(), key=lambda item: (item[0][2], item[0][0], item[0][1])
            )
            if include_current or minute != self._current
        ]

    def forget_before(self, minute: datetime) -> None:
        """Drop the minutes before ``minute`` (written, complete); ignore later ticks for them."""
        minute = minute_of(minute)
        if self._forgotten_before is None or minute > self._forgotten_before:
            self._forgotten_before = minute
        self._rollups = {key: r for key, r in self._rollups.items() if key[2] >= minute}

    def process_rows(self) -> list[ProcessUsageRow]:
        """Every session's process groups, cumulative since this aggregator started,
        by container then group."""
        return [
            ProcessUsageRow(
                container_id=container,
                process_group=label,
                writer=self.writer_id,
                samples=group.samples,
                present_ms=round(group.present),
                busy_ms=round(group.busy),
                memory_max_bytes=group.memory_max_bytes,
                first_seen=group.first_seen,
                last_seen=group.last_seen,
            )
            for container, groups in sorted(self._groups.items())
            for label, group in sorted(groups.items())
        ]

    def forget_sessions(self, container_ids: Iterable[str]) -> None:
        """Drop the process groups of these containers (ended, their last rows written)."""
        for container in container_ids:
            self._groups.pop(container, None)
            self._labels.pop(container, None)
