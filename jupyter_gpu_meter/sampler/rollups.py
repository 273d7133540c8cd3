"""Per-minute rollups (pure): ticks folded into the ledger's rows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ..clock import as_utc
from ..ledger.records import RollupRow, truncate_to_minute
from .readings import Tick


def minute_of(at: datetime) -> datetime:
    """The UTC minute ``at`` falls in (truncated)."""
    return truncate_to_minute(as_utc(at))


@dataclass
class _Rollup:
    samples: int = 0
    util_sum: int = 0
    util_max: int = 0
    memory_max_bytes: int = 0


class RollupAggregator:
    """Folds ticks into per-minute, per-container, per-GPU rows. Pure.

    Rows are cumulative: a minute's row grows as its ticks arrive, and the
    ledger upserts by (session, GPU, minute, writer), so writing a row again is
    harmless. A GPU whose utilization is unknown (None) adds no sample, and its
    memory is not counted either.
    """

    def __init__(self, writer_id: str) -> None:
        self.writer_id = writer_id
        self._rollups: dict[tuple[str, str, datetime], _Rollup] = {}
        self._current: datetime | None = None
        self._forgotten_before: datetime | None = None

    def add(self, tick: Tick, owners: Mapping[str, str | None]) -> bool:
        """Count the tick's GPUs held by a container (``owners``: GPU UUID -> container id).

        False (and nothing counted) for a tick in a minute already forgotten,
        whose row was written complete: counting it would shrink that row.
        """
        minute = minute_of(tick.at)
        if self._forgotten_before is not None and minute < self._forgotten_before:
            return False
        if self._current is None or minute > self._current:
            self._current = minute
        for gpu in tick.gpus:
            container = owners.get(gpu.uuid)
            if not container or gpu.utilization is None:
                continue
            rollup = self._rollups.setdefault((container, gpu.uuid, minute), _Rollup())
            rollup.samples += 1
            rollup.util_sum += gpu.utilization
            rollup.util_max = max(rollup.util_max, gpu.utilization)
            rollup.memory_max_bytes = max(rollup.memory_max_bytes, gpu.memory_used_bytes)
        return True

    def rows(self, include_current: bool = True) -> list[RollupRow]:
        """Every row kept, by minute; the newest tick's minute only if ``include_current``."""
        return [
            RollupRow(
                container,
                uuid,
                minute,
                self.writer_id,
                rollup.samples,
                rollup.util_sum / rollup.samples,
                rollup.util_max,
                rollup.memory_max_bytes,
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
