"""GPU processes of each session by process group: one row per session, group and writer."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select

from .engine import Database, aware
from .models import ProcessUsageModel
from .records import ProcessGroupUsage, ProcessUsageRow
from .rollups import upsert_per_session

_processes = ProcessUsageModel.__table__

#: the most characters of a process group's name the ledger keeps
GROUP_MAX_LENGTH = _processes.c.process_group.type.length


def _group_value(row: ProcessUsageRow) -> dict:
    return {
        "process_group": row.process_group,
        "writer": row.writer,
        "samples": int(row.samples),
        "present_ms": int(row.present_ms),
        "busy_ms": int(row.busy_ms),
        "memory_max_bytes": int(row.memory_max_bytes),
        "first_seen": row.first_seen,
        "last_seen": row.last_seen,
    }


class ProcessStore:
    """Write sessions' process groups (cumulative, idempotent) and read them merged."""

    def __init__(self, db: Database):
        self.db = db

    def add_process_usage(self, rows: Iterable[ProcessUsageRow]) -> list[ProcessUsageRow]:
        """Write process groups' figures in one transaction; the rows it could not place.

        Each row replaces the same writer's row for the same container and
        group (rows are cumulative since that writer started), so writing a
        batch twice changes nothing. Rows for a container with no session are
        not written but returned, like :meth:`~.rollups.RollupStore.add_rollups`'.
        """
        rows = list(rows)
        for row in rows:
            aware("first_seen", row.first_seen)
            aware("last_seen", row.last_seen)
            if not row.writer or not row.process_group:
                raise ValueError(f"{row!r}: needs a writer and a process group")
            if len(row.process_group) > GROUP_MAX_LENGTH:
                raise ValueError(
                    f"{row!r}: a process group has at most {GROUP_MAX_LENGTH} characters"
                )
            counts = (row.samples, row.present_ms, row.busy_ms, row.memory_max_bytes)
            if min(counts) < 0:
                raise ValueError(f"{row!r}: samples, times and memory cannot be negative")
        if not rows:
            return []
        key = ("session_id", "process_group", "writer")
        with self.db.write() as connection:
            unplaced, _ = upsert_per_session(
                self.db, connection, _processes, key, rows, _group_value
            )
        return unplaced

    def process_groups(self, session_id: int) -> list[ProcessGroupUsage]:
        """The session's process groups, writers merged, the busiest first."""
        p = _processes.c
        busy, present = func.sum(p.busy_ms), func.sum(p.present_ms)
        statement = (
            select(
                p.process_group,
                func.sum(p.samples),
                present,
                busy,
                func.max(p.memory_max_bytes),
                func.min(p.first_seen),
                func.max(p.last_seen),
            )
            .where(p.session_id == session_id)
            .group_by(p.process_group)
            .order_by(busy.desc(), present.desc(), p.process_group)
        )
        with self.db.read() as connection:
            return [
                ProcessGroupUsage(
                    process_group=group,
                    samples=int(samples),
                    present_ms=int(present_ms),
                    busy_ms=int(busy_ms),
                    memory_max_bytes=int(memory),
                    first_seen=first,
                    last_seen=last,
                )
                for group, samples, present_ms, busy_ms, memory, first, last in connection.execute(
                    statement
                )
            ]
