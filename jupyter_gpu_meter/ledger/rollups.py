"""Per-minute GPU statistics of each session: one row per session, GPU, minute and writer."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

from sqlalchemy import func, select

from .efficiency import refresh_sums
from .engine import Database, aware
from .models import RollupModel, SessionModel
from .records import MinuteBusy, MinuteUtilization, Rollup, RollupRow, truncate_to_minute

#: what ``busy_source`` may be
BUSY_SOURCES = ("utilization", "sm-activity")

_rollups = RollupModel.__table__
_sessions = SessionModel.__table__


def _rollup_value(row: RollupRow) -> dict:
    return {
        "gpu_uuid": row.gpu_uuid,
        "minute": truncate_to_minute(row.minute.astimezone(timezone.utc)),
        "writer": row.writer,
        "samples": int(row.samples),
        "util_mean": float(row.util_mean),
        "util_max": int(row.util_max),
        "memory_max_bytes": int(row.memory_max_bytes),
        "busy_ms": int(row.busy_ms),
        "energy_mj": None if row.energy_mj is None else int(row.energy_mj),
        "busy_source": row.busy_source,
    }


def upsert_per_session(db: Database, connection, table, key: tuple[str, ...], rows, value_of):
    """Write `rows` into `table` in one statement, each under the session of its
    ``container_id`` (``value_of(row)``: the row's other columns); a row replaces the
    row with the same `key` (the last row for a key wins: one statement may not touch
    a row twice). Returns the rows whose container has no session, not written, and
    the ids of the closed sessions written to. In the caller's transaction."""
    found = connection.execute(
        select(_sessions.c.container_id, _sessions.c.id, _sessions.c.ended_at.is_not(None)).where(
            _sessions.c.container_id.in_({row.container_id for row in rows})
        )
    ).all()
    session_ids = {container_id: session_id for container_id, session_id, _ in found}
    values, unplaced = {}, []
    for row in rows:
        if row.container_id not in session_ids:
            unplaced.append(row)
            continue
        value = {"session_id": session_ids[row.container_id], **value_of(row)}
        values[tuple(value[name] for name in key)] = value
    if not values:
        return unplaced, set()
    statement = db.insert(table)
    updated = [name for name in next(iter(values.values())) if name not in key]
    statement = statement.on_conflict_do_update(
        index_elements=list(key), set_={name: statement.excluded[name] for name in updated}
    )
    connection.execute(statement, list(values.values()))
    written = {value["session_id"] for value in values.values()}
    return unplaced, {session_id for _, session_id, ended in found if ended} & written


class RollupStore:
    """Write a session's rollups (cumulative, idempotent) and read them merged."""

    def __init__(self, db: Database):
        self.db = db

    def add_rollups(self, rows: Iterable[RollupRow]) -> list[RollupRow]:
        """Write per-minute rollups in one transaction; the rows it could not place.

        Each row replaces the same writer's row for the same container, GPU and
        minute (rows are cumulative), so writing a batch twice changes nothing;
        other writers' rows for that minute stay. Rows for a container with no
        session are not written but returned, for the caller to retry after
        the session is opened.
        """
        rows = list(rows)
        for row in rows:
            aware("minute", row.minute)
            if row.samples < 0 or not row.writer or not row.gpu_uuid:
                raise ValueError(f"{row!r}: needs samples >= 0, a writer and a GPU UUID")
            if row.busy_ms < 0 or (row.energy_mj is not None and row.energy_mj < 0):
                raise ValueError(f"{row!r}: busy_ms and energy_mj cannot be negative")
            if row.busy_source not in BUSY_SOURCES:
                raise ValueError(f"{row!r}: busy_source must be one of {BUSY_SOURCES}")
        if not rows:
            return []
        key = ("session_id", "gpu_uuid", "minute", "writer")
        with self.db.write() as connection:
            unplaced, closed = upsert_per_session(
                self.db, connection, _rollups, key, rows, _rollup_value
            )
            # a closed session's stored sums follow its rollups written late
            refresh_sums(connection, closed)
        return unplaced

    def rollups(self, container_id: str) -> list[Rollup]:
        """The session's rollups, every writer of a minute merged, by minute then GPU."""
        r = _rollups.c
        samples = func.sum(r.samples)
        statement = (
            select(
                r.gpu_uuid,
                r.minute,
                samples.label("samples"),
                func.coalesce(
                    func.sum(r.util_mean * r.samples) / func.nullif(samples, 0), 0.0
                ).label("util_mean"),
                func.max(r.util_max).label("util_max"),
                func.max(r.memory_max_bytes).label("memory_max_bytes"),
                func.count().label("writers"),
                func.sum(r.busy_ms).label("busy_ms"),
                func.sum(r.energy_mj).label("energy_mj"),
                func.min(func.nullif(r.busy_source, "")).label("source_min"),
                func.max(func.nullif(r.busy_source, "")).label("source_max"),
            )
            .join(_sessions, _sessions.c.id == r.session_id)
            .where(_sessions.c.container_id == container_id)
            .group_by(r.gpu_uuid, r.minute)
            .order_by(r.minute, r.gpu_uuid)
        )
        with self.db.read() as connection:
            return [
                Rollup(
                    container_id=container_id,
                    gpu_uuid=row.gpu_uuid,
                    minute=row.minute,
                    samples=int(row.samples),
                    util_mean=float(row.util_mean),
                    util_max=int(row.util_max),
                    memory_max_bytes=int(row.memory_max_bytes),
                    writers=int(row.writers),
                    busy_ms=int(row.busy_ms),
                    energy_mj=None if row.energy_mj is None else int(row.energy_mj),
                    busy_source=(
                        (row.source_min or "") if row.source_min == row.source_max else "mixed"
                    ),
                )
                for row in connection.execute(statement)
            ]

    def utilization_of(self, container_ids: Iterable[str]) -> dict[str, list[MinuteUtilization]]:
        """Per session, each minute's samples and utilization over its GPUs and writers,
        by minute, in one query: what the pages draw, without a row per GPU."""
        ids = sorted(set(container_ids))
        result: dict[str, list[MinuteUtilization]] = {container_id: [] for container_id in ids}
        if not ids:
            return result
        r = _rollups.c
        statement = (
            select(
                _sessions.c.container_id,
                r.minute,
                func.sum(r.samples),
                func.coalesce(func.sum(r.util_mean * r.samples), 0.0),
            )
            .join(_sessions, _sessions.c.id == r.session_id)
            .where(_sessions.c.container_id.in_(ids))
            .group_by(_sessions.c.container_id, r.minute)
            .order_by(_sessions.c.container_id, r.minute)
        )
        with self.db.read() as connection:
            for container_id, minute, samples, util_sum in connection.execute(statement):
                result[container_id].append(
                    MinuteUtilization(minute, int(samples), float(util_sum))
                )
        return result

    def recent_minutes(
        self, container_ids: Iterable[str], since: datetime
    ) -> dict[str, list[MinuteBusy]]:
        """Per session, each minute from the one `since` is in: the highest utilization
        of its GPUs and how many of them have a reading, every writer merged, by
        minute, in one query. A minute with no reading has no entry: its agent is
        late (cluster mode: what the hub's policies read, see
        :func:`jupyter_gpu_meter.policies.activity_from_minutes`)."""
        since = truncate_to_minute(aware("since", since).astimezone(timezone.utc))
        ids = sorted(set(container_ids))
        result: dict[str, list[MinuteBusy]] = {container_id: [] for container_id in ids}
        if not ids:
            return result
        r = _rollups.c
        statement = (
            select(
                _sessions.c.container_id,
                r.minute,
                func.max(r.util_max),
                func.count(r.gpu_uuid.distinct()),
            )
            .join(_sessions, _sessions.c.id == r.session_id)
            .where(_sessions.c.container_id.in_(ids), r.minute >= since, r.samples > 0)
            .group_by(_sessions.c.container_id, r.minute)
            .order_by(_sessions.c.container_id, r.minute)
        )
        with self.db.read() as connection:
            for container_id, minute, util_max, gpus in connection.execute(statement):
                result[container_id].append(MinuteBusy(minute, int(util_max), int(gpus)))
        return result
