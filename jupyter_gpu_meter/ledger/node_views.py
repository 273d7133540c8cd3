"""What the hub's pages, API and metrics read of a cluster: the nodes, their GPUs, the
sessions open on them and each held GPU's latest rollup, in one snapshot.

The agents write these (:mod:`.nodes`, :mod:`.sessions`, :mod:`.rollups`); this
module only reads. Three statements in one snapshot, whatever the number of
nodes: every ``nodes`` row, the open sessions, and for each GPU an open
session holds its latest minute (every writer of that minute merged), found
by one backwards seek of the rollups' primary key per GPU, so it costs the
same for a session of ten minutes as for one of ten days.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Integer, String, and_, column, func, select, values

from .engine import Database
from .models import NodeModel, RollupModel, SessionModel
from .nodes import NodeRecord, _node
from .records import SessionRecord
from .sessions import _record

_rollups = RollupModel.__table__
_sessions = SessionModel.__table__
_nodes = NodeModel.__table__


@dataclass(frozen=True)
class LatestMinute:
    """A held GPU's latest per-minute rollup, its writers merged."""

    minute: datetime
    samples: int
    #: sample-weighted mean utilization, percent; None without samples
    utilization: float | None
    memory_max_bytes: int


@dataclass(frozen=True)
class ClusterRead:
    """The cluster as the ledger has it at one moment."""

    #: by name
    nodes: tuple[NodeRecord, ...]
    #: every open session (one-host sessions too, with node "")
    sessions: tuple[SessionRecord, ...]
    #: GPU UUID -> its latest rollup, for the GPUs open sessions hold
    latest: dict


def latest_statement(held: list[tuple[int, str]]):
    """The latest minute of each (session id, GPU UUID) in `held`, writers merged: one
    index seek per pair (the rollups' key is session, GPU, minute, writer)."""
    pairs = values(column("session_id", Integer), column("gpu_uuid", String), name="held").data(
        held
    )
    pairs = pairs.cte("held")
    r = _rollups.c
    newest = _rollups.alias("newest")
    last = (
        select(func.max(newest.c.minute))
        .where(newest.c.session_id == pairs.c.session_id, newest.c.gpu_uuid == pairs.c.gpu_uuid)
        .scalar_subquery()
    )
    samples = func.sum(r.samples)
    return (
        select(
            r.gpu_uuid,
            r.minute,
            samples,
            func.sum(r.util_mean * r.samples),
            func.max(r.memory_max_bytes),
        )
        .select_from(
            pairs.join(
                _rollups, and_(r.session_id == pairs.c.session_id, r.gpu_uuid == pairs.c.gpu_uuid)
            )
        )
        .where(r.minute == last)
        .group_by(r.session_id, r.gpu_uuid, r.minute)
    )


def read_cluster(db: Database) -> ClusterRead:
    """The nodes, the open sessions and the held GPUs' latest rollups, in one snapshot."""
    with db.snapshot() as connection, connection.begin():
        nodes = [_node(row) for row in connection.execute(select(_nodes).order_by(_nodes.c.name))]
        rows = connection.execute(select(_sessions).where(_sessions.c.ended_at.is_(None)))
        sessions = sorted((_record(row) for row in rows), key=lambda s: (s.started_at, s.id))
        held = [(s.id, uuid) for s in sessions for uuid in s.gpu_uuids]
        latest = {}
        # SQLite takes at most 32,766 bound values: 2 a GPU, so 8,000 GPUs a statement
        for i in range(0, len(held), 8000):
            for uuid, minute, samples, util_sum, memory in connection.execute(
                latest_statement(held[i : i + 8000])
            ):
                samples = int(samples or 0)
                latest[uuid] = LatestMinute(
                    minute=minute,
                    samples=samples,
                    utilization=float(util_sum) / samples if samples else None,
                    memory_max_bytes=int(memory or 0),
                )
    return ClusterRead(tuple(nodes), tuple(sessions), latest)
