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

from sqlalchemy import BigInteger, Float, Integer, String, column, select, text

from .engine import Database
from .models import NodeModel, SessionModel
from .nodes import NodeRecord, node_record
from .types import UTCDateTime

_sessions = SessionModel.__table__
_nodes = NodeModel.__table__


@dataclass(frozen=True)
class OpenSession:
    """What the cluster views need of an open session: who holds which GPUs, where."""

    id: int
    container_id: str
    user: str
    server: str
    gpu_uuids: tuple[str, ...]
    started_at: datetime
    #: "" for a one-host session
    node: str

    @property
    def gpu_count(self) -> int:
        return len(self.gpu_uuids)


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
    #: every open session (one-host sessions too, with node ""), oldest first
    sessions: tuple[OpenSession, ...]
    #: GPU UUID -> its latest rollup, for the GPUs open sessions hold
    latest: dict


#: the latest minute of each held GPU: one backwards seek of the rollups' key (session,
#: GPU, minute, writer) per (session, GPU) pair in ``held``, writers merged
_LATEST = (
    "SELECT r.gpu_uuid, r.minute, sum(r.samples) AS samples, "
    "sum(r.util_mean * r.samples) AS util_sum, max(r.memory_max_bytes) AS memory "
    "FROM {held} JOIN rollups r ON r.session_id = held.session_id "
    "AND r.gpu_uuid = held.gpu_uuid "
    "WHERE r.minute = (SELECT max(n.minute) FROM rollups n "
    "WHERE n.session_id = held.session_id AND n.gpu_uuid = held.gpu_uuid) "
    "GROUP BY r.session_id, r.gpu_uuid, r.minute"
)
_LATEST_COLUMNS = (
    column("gpu_uuid", String),
    column("minute", UTCDateTime),
    column("samples", Integer),
    column("util_sum", Float),
    column("memory", BigInteger),
)
#: PostgreSQL: the pairs as two arrays, two parameters whatever their number
_LATEST_POSTGRESQL = text(
    _LATEST.format(
        held="unnest(CAST(:ids AS INTEGER[]), CAST(:uuids AS VARCHAR[])) "
        "AS held(session_id, gpu_uuid)"
    )
).columns(*_LATEST_COLUMNS)


def _latest_sqlite(count: int):
    """SQLite (no arrays): the pairs as ``VALUES`` of bound ``s<i>``, ``g<i>``. Text, not
    a SQLAlchemy ``values()``, which is compiled anew for every set of rows (0.1 s for
    800 GPUs); this text is the same for the same number of GPUs, and cached."""
    pairs = ", ".join(f"(:s{i}, :g{i})" for i in range(count))
    # only bind names, made of numbers: no value is in the text
    held = f"(SELECT column1 AS session_id, column2 AS gpu_uuid FROM (VALUES {pairs})) AS held"  # noqa: S608
    return text(_LATEST.format(held=held)).columns(*_LATEST_COLUMNS)


def _latest_rows(connection, held: list[tuple[int, str]]):
    if connection.dialect.name == "postgresql":
        ids = [session_id for session_id, _ in held]
        uuids = [uuid for _, uuid in held]
        return connection.execute(_LATEST_POSTGRESQL, {"ids": ids, "uuids": uuids}).all()
    rows = []
    # SQLite takes at most 32,766 bound values: 2 a GPU, so 8,000 GPUs a statement
    for i in range(0, len(held), 8000):
        part = held[i : i + 8000]
        binds = {f"s{j}": session_id for j, (session_id, _) in enumerate(part)}
        binds.update({f"g{j}": uuid for j, (_, uuid) in enumerate(part)})
        rows += connection.execute(_latest_sqlite(len(part)), binds).all()
    return rows


_OPEN = select(
    _sessions.c.id,
    _sessions.c.container_id,
    _sessions.c.username,
    _sessions.c.server,
    _sessions.c.gpu_uuids,
    _sessions.c.started_at,
    _sessions.c.node,
).where(_sessions.c.ended_at.is_(None))


def read_cluster(db: Database) -> ClusterRead:
    """The nodes, the open sessions and the held GPUs' latest rollups, in one snapshot."""
    with db.snapshot() as connection, connection.begin():
        nodes = [
            node_record(row)
            for row in connection.execute(select(_nodes).order_by(_nodes.c.name)).all()
        ]
        sessions = [
            OpenSession(
                id_,
                container_id,
                user,
                server,
                tuple(filter(None, uuids.split(","))),
                started_at,
                node,
            )  # fmt: skip
            for id_, container_id, user, server, uuids, started_at, node in connection.execute(
                _OPEN
            ).all()
        ]
        sessions.sort(key=lambda s: (s.started_at, s.id))
        held = [(s.id, uuid) for s in sessions for uuid in s.gpu_uuids]
        latest = {}
        if held:
            for uuid, minute, samples, util_sum, memory in _latest_rows(connection, held):
                samples = int(samples or 0)
                latest[uuid] = LatestMinute(
                    minute=minute,
                    samples=samples,
                    utilization=float(util_sum) / samples if samples else None,
                    memory_max_bytes=int(memory or 0),
                )
    return ClusterRead(tuple(nodes), tuple(sessions), latest)
