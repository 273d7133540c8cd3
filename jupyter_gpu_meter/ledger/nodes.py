"""GPU servers in cluster mode: each node's agent, its GPUs, its heartbeats, and "node lost".

Each node's meter agent upserts its row every heartbeat interval. The hub's
meter sweeps: a node whose last heartbeat is older than
:data:`LOST_AFTER_HEARTBEATS` of its own intervals is marked lost and each of
its open sessions is ended at that last heartbeat (reason
:data:`NODE_LOST`): the charge of a server that died with its node is never
counted past the last time its node was known to be alive, so the billing
error is at most those intervals. When the agent comes back, its heartbeat
clears ``lost_at`` and its reconcile reopens the sessions whose container
survived (:meth:`NodeStore.reopen_lost_session`): one continuous session,
never two.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from ..pricing import session_sums
from .efficiency import refresh_sums
from .engine import Database, aware, checked_text
from .models import NodeModel, SessionModel
from .records import SessionRecord
from .sessions import _record

_nodes = NodeModel.__table__
_sessions = SessionModel.__table__

#: the end reason of a session closed because its node stopped reporting
NODE_LOST = "node lost"
#: a node is lost when its last heartbeat is older than this many of its intervals
LOST_AFTER_HEARTBEATS = 2

#: the columns a closed session has and a running one has not (None while running)
_CLOSED_ONLY = (
    "ended_at",
    "end_reason",
    "gpu_microseconds",
    "charge_units",
    "rollup_samples",
    "busy_ms",
    "energy_mj",
    "energy_units",
    "rollups_from",
    "rollups_until",
)


@dataclass(frozen=True)
class NodeGPU:
    """One GPU as a node's agent found it."""

    uuid: str
    index: int
    model: str
    memory_total_bytes: int
    #: what is wrong with it ("GPU is lost", an NVML error) when the agent's last GPU
    #: sample could not read it; "" while healthy
    problem: str = ""

    def to_json(self) -> dict:
        found = {
            "uuid": self.uuid,
            "index": self.index,
            "model": self.model,
            "memory_total_bytes": self.memory_total_bytes,
        }
        if self.problem:
            found["problem"] = self.problem
        return found


@dataclass(frozen=True)
class NodeRecord:
    """A node's row: its agent, its GPUs, its last heartbeat, whether the hub lost it."""

    name: str
    gpus: tuple[NodeGPU, ...]
    agent_version: str
    agent_started_at: datetime
    last_heartbeat_at: datetime
    heartbeat_interval_s: float
    #: when the hub declared it lost; None while it reports
    lost_at: datetime | None

    @property
    def lost(self) -> bool:
        return self.lost_at is not None

    def deadline(self) -> datetime:
        """When the node counts as lost unless another heartbeat comes."""
        late = LOST_AFTER_HEARTBEATS * self.heartbeat_interval_s
        return self.last_heartbeat_at + timedelta(seconds=late)

    def late(self, now: datetime) -> bool:
        """Whether its last heartbeat is older than :data:`LOST_AFTER_HEARTBEATS` intervals."""
        return now > self.deadline()


def _gpus_json(gpus: Iterable) -> str:
    """The `gpus` column: NodeGPU objects or dicts with their four keys (and an
    optional ``problem``), as JSON."""
    items = []
    for gpu in gpus:
        if isinstance(gpu, dict):
            gpu = NodeGPU(
                str(gpu["uuid"]),
                int(gpu["index"]),
                str(gpu["model"]),
                int(gpu["memory_total_bytes"]),
                str(gpu.get("problem") or "")[:255],
            )
        items.append(gpu.to_json())
    return json.dumps(items, separators=(",", ":"))


def node_record(row) -> NodeRecord:
    return NodeRecord(
        name=row.name,
        gpus=tuple(NodeGPU(**gpu) for gpu in json.loads(row.gpus or "[]")),
        agent_version=row.agent_version,
        agent_started_at=row.agent_started_at,
        last_heartbeat_at=row.last_heartbeat_at,
        heartbeat_interval_s=row.heartbeat_interval_s,
        lost_at=row.lost_at,
    )


class NodeStore:
    """The ``nodes`` table, and the sessions a lost node leaves behind."""

    def __init__(self, db: Database):
        self.db = db

    def heartbeat(
        self,
        name: str,
        *,
        gpus: Iterable,
        agent_version: str,
        agent_started_at: datetime,
        heartbeat_interval_s: float,
        at: datetime,
    ) -> datetime | None:
        """Record that `name`'s agent is alive at `at` with these GPUs; new or not.

        Clears the node's ``lost_at``; returns the ``lost_at`` it cleared (None
        when the node was not lost), so the agent knows to reconcile.
        """
        checked_text("node", name, empty=False)
        at = aware("at", at)
        if not heartbeat_interval_s > 0:
            raise ValueError(f"heartbeat_interval_s {heartbeat_interval_s!r}: give seconds > 0")
        values = dict(
            name=name,
            gpus=_gpus_json(gpus),
            agent_version=checked_text("agent_version", agent_version, most=64),
            agent_started_at=aware("agent_started_at", agent_started_at),
            last_heartbeat_at=at,
            heartbeat_interval_s=float(heartbeat_interval_s),
            lost_at=None,
        )
        statement = self.db.insert(_nodes).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=["name"],
            set_={key: getattr(statement.excluded, key) for key in values if key != "name"},
        )
        with self.db.write() as connection:
            was_lost = connection.execute(
                select(_nodes.c.lost_at).where(_nodes.c.name == name)
            ).scalar_one_or_none()
            connection.execute(statement)
        return was_lost

    def nodes(self) -> list[NodeRecord]:
        """Every node that ever reported, by name."""
        with self.db.read() as connection:
            rows = connection.execute(select(_nodes).order_by(_nodes.c.name)).all()
        return [node_record(row) for row in rows]

    def get_node(self, name: str) -> NodeRecord | None:
        with self.db.read() as connection:
            row = connection.execute(select(_nodes).where(_nodes.c.name == name)).first()
        return node_record(row) if row else None

    def mark_lost(self, name: str, at: datetime) -> bool:
        """Set `name`'s ``lost_at`` to `at`; True if it was not lost before."""
        statement = (
            update(_nodes)
            .where(_nodes.c.name == name, _nodes.c.lost_at.is_(None))
            .values(lost_at=aware("at", at))
        )
        with self.db.write() as connection:
            return connection.execute(statement).rowcount == 1

    def clear_lost(self, name: str) -> bool:
        """Clear `name`'s ``lost_at``; True if it was lost."""
        statement = (
            update(_nodes)
            .where(_nodes.c.name == name, _nodes.c.lost_at.is_not(None))
            .values(lost_at=None)
        )
        with self.db.write() as connection:
            return connection.execute(statement).rowcount == 1

    def sweep_lost_nodes(self, now: datetime) -> dict[str, list[str]]:
        """The hub's node sweep: mark late nodes lost, end their open sessions.

        A node whose last heartbeat is older than :data:`LOST_AFTER_HEARTBEATS`
        of its intervals gets ``lost_at`` = `now`, and every open session of a
        lost node ends at the node's last heartbeat (never before its start)
        with reason :data:`NODE_LOST`. Idempotent: a sweep interrupted halfway
        is finished by the next. Returns node -> the container IDs it closed, for
        each node found lost now or with sessions closed now.
        """
        now = aware("now", now)
        closed: dict[str, list[str]] = {}
        for node in self.nodes():
            newly = False
            if not node.lost:
                if not node.late(now):
                    continue
                newly = self.mark_lost(node.name, now)
            ended = []
            for container_id in self._open_of(node.name):
                if self._close_lost(container_id, node.name, node.last_heartbeat_at):
                    ended.append(container_id)
            if ended or newly:
                closed[node.name] = ended
        return closed

    def _open_of(self, node: str) -> list[str]:
        statement = (
            select(_sessions.c.container_id)
            .where(_sessions.c.node == node, _sessions.c.ended_at.is_(None))
            .order_by(_sessions.c.container_id)
        )
        with self.db.read() as connection:
            return list(connection.execute(statement).scalars())

    def _close_lost(self, container_id: str, node: str, last_heartbeat: datetime) -> bool:
        """End one open session of a lost node at its last heartbeat, if still lost."""
        with self.db.write() as connection:
            # the node's heartbeat may have come since the sweep read it: then it is back
            # locked (PostgreSQL) until the session is closed: a heartbeat waits, then
            # the agent's reconcile reopens what survived
            still_lost = connection.execute(
                select(_nodes.c.lost_at).where(_nodes.c.name == node).with_for_update()
            ).scalar_one_or_none()
            if still_lost is None:
                return False
            return _end(connection, container_id, last_heartbeat, NODE_LOST, only_open=True)

    def node_lost_sessions(self, node: str, container_ids: Iterable[str]) -> list[SessionRecord]:
        """`node`'s sessions ended :data:`NODE_LOST`, of these containers (those Docker
        still has: a session whose container is gone keeps its end)."""
        ids = sorted(set(container_ids))
        if not ids:
            return []
        found = []
        with self.db.read() as connection:
            for start in range(0, len(ids), 500):  # bounded IN lists
                statement = select(_sessions).where(
                    _sessions.c.container_id.in_(ids[start : start + 500]),
                    _sessions.c.node == node,
                    _sessions.c.end_reason == NODE_LOST,
                )
                found.extend(_record(row) for row in connection.execute(statement))
        return sorted(found, key=lambda session: (session.started_at, session.id))

    def reopen_lost_session(self, container_id: str) -> bool:
        """Undo :data:`NODE_LOST` on a session whose container survived; True if it did.

        Its end, end reason and the sums written with the end are cleared: it
        runs on as one session. Only a session ended :data:`NODE_LOST` reopens.
        """
        statement = (
            update(_sessions)
            .where(
                _sessions.c.container_id == container_id,
                _sessions.c.end_reason == NODE_LOST,
            )
            .values(**dict.fromkeys(_CLOSED_ONLY))
        )
        with self.db.write() as connection:
            return connection.execute(statement).rowcount == 1

    def end_lost_session_earlier(self, container_id: str, ended_at: datetime, reason: str) -> bool:
        """Move a :data:`NODE_LOST` session's end back to Docker's own (its container
        stopped before the node's last heartbeat); True if it moved. A later
        `ended_at` changes nothing: never billed past the last heartbeat."""
        ended_at = aware("ended_at", ended_at)
        with self.db.write() as connection:
            row = connection.execute(
                select(_sessions).where(
                    _sessions.c.container_id == container_id,
                    _sessions.c.end_reason == NODE_LOST,
                )
            ).first()
            if row is None or ended_at >= row.ended_at:
                return False
            return _end(connection, container_id, ended_at, reason, only_open=False)


def _end(connection, container_id: str, ended_at: datetime, reason: str, *, only_open) -> bool:
    """Set a session's end, end reason and sums (as ``close_session`` does), on `connection`."""
    where = [_sessions.c.container_id == container_id]
    if only_open:
        where.append(_sessions.c.ended_at.is_(None))
    row = connection.execute(select(_sessions).where(*where)).first()
    if row is None:
        return False
    session = _record(row)
    ended_at = max(ended_at, session.started_at)
    gpu_us, units = session_sums(session.price, session.started_at, ended_at)
    values = dict(ended_at=ended_at, end_reason=reason[:255])
    values.update(gpu_microseconds=gpu_us, charge_units=units)
    if connection.execute(update(_sessions).where(*where).values(**values)).rowcount != 1:
        return False
    refresh_sums(connection, [session.id])
    return True
