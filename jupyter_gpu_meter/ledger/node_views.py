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

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Integer, String, and_, column, func, select, values

from .engine import Database
from .models import RollupModel, SessionModel, metadata
from .records import SessionRecord
from .sessions import _record

_rollups = RollupModel.__table__
_sessions = SessionModel.__table__


@dataclass(frozen=True)
class NodeGPU:
    """One GPU of a node, as its agent found it."""

    uuid: str
    index: int
    model: str
    memory_total_bytes: int | None


@dataclass(frozen=True)
class NodeState:
    """One row of the ``nodes`` table, its GPUs decoded."""

    name: str
    gpus: tuple[NodeGPU, ...]
    agent_version: str
    agent_started_at: datetime | None
    last_heartbeat_at: datetime | None
    #: the agent's own heartbeat setting, seconds
    heartbeat_interval_s: float
    #: when the hub declared it lost; None while it reports
    lost_at: datetime | None


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

    nodes: tuple[NodeState, ...]
    #: every open session (one-host sessions too, with node "")
    sessions: tuple[SessionRecord, ...]
    #: GPU UUID -> its latest rollup, for the GPUs open sessions hold
    latest: dict


def decode_gpus(text: str | None) -> tuple[NodeGPU, ...]:
    """The ``nodes.gpus`` JSON as :class:`NodeGPU`; an unreadable value is no GPU. Pure."""
    try:
        found = json.loads(text or "[]")
    except ValueError:
        return ()
    gpus = []
    for item in found if isinstance(found, list) else ():
        if not isinstance(item, dict) or not item.get("uuid"):
            continue
        memory = item.get("memory_total_bytes")
        gpus.append(
            NodeGPU(
                uuid=str(item["uuid"]),
                index=int(item.get("index") or 0),
                model=str(item.get("model") or ""),
                memory_total_bytes=int(memory) if isinstance(memory, int) else None,
            )
        )
    return tuple(gpus)


def _node(row) -> NodeState:
    return NodeState(
        name=row.name,
        gpus=decode_gpus(row.gpus),
        agent_version=row.agent_version or "",
        agent_started_at=row.agent_started_at,
        last_heartbeat_at=row.last_heartbeat_at,
        heartbeat_interval_s=float(row.heartbeat_interval_s or 0.0),
        lost_at=row.lost_at,
    )


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
    nodes_table = metadata.tables["nodes"]
    with db.snapshot() as connection, connection.begin():
        nodes = [_node(row) for row in connection.execute(select(nodes_table))]
        nodes.sort(key=lambda node: node.name)
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
