"""The meter's state between runs: small facts by key (``meter_state``).

Among them, the containers the hub stopped and removed (``stopped_container:<id>``):
what Docker said of each around its stop, so a meter that was down while the
engine's short event log (its last 256 events) moved past the container's
``die`` still bills its run to Docker's own times (see
:class:`jupyter_gpu_meter.spawner_meter.StopRecordMixin`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlalchemy import delete, select

from .engine import Database
from .models import StateModel

_state = StateModel.__table__


def upsert_state(db: Database, key: str, value: str, at):
    """The statement that sets `key` to `value` (updated `at`), new or not."""
    statement = db.insert(_state).values(key=key, value=value, updated_at=at)
    return statement.on_conflict_do_update(
        index_elements=["key"],
        set_={"value": statement.excluded.value, "updated_at": statement.excluded.updated_at},
    )


def read_state(connection, key: str) -> str | None:
    """`key`'s value read on `connection`, None if it has none."""
    return connection.execute(
        select(_state.c.value).where(_state.c.key == key)
    ).scalar_one_or_none()


#: meter_state key prefix of a stopped container's record (its id follows)
STOPPED_PREFIX = "stopped_container:"


def _parsed(value: str) -> dict:
    """A stopped container's record; {} (nothing known, to forget) if it is not JSON."""
    try:
        record = json.loads(value)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


class StateStore:
    """Get and set the meter's state, e.g. the last Docker event handled."""

    def __init__(self, db: Database):
        self.db = db

    def get_state(self, key: str) -> str | None:
        """`key`'s value, None if it has none."""
        with self.db.read() as connection:
            return read_state(connection, key)

    def set_state(self, key: str, value: str) -> None:
        """Set `key` to `value` (a str), stamped with the ledger's clock."""
        if not isinstance(value, str):
            raise TypeError(f"state {key!r}: value must be a str, got {value!r}")
        with self.db.write() as connection:
            connection.execute(upsert_state(self.db, key, value, self.db.clock()))

    def record_stopped_container(self, container_id: str, record: dict) -> None:
        """Keep what Docker said of a stopped container (`record`, JSON-able: see
        :func:`jupyter_gpu_meter.sessions.stopped_record`) until a meter reconciles it."""
        if not container_id or len(STOPPED_PREFIX + container_id) > 255:
            raise ValueError(f"container id {container_id!r}: give Docker's id (64 hex digits)")
        self.set_state(STOPPED_PREFIX + container_id, json.dumps(record, sort_keys=True))

    def stopped_containers(self) -> dict[str, dict]:
        """Container id -> record of the stopped containers no meter has reconciled yet."""
        key = _state.c.key
        with self.db.read() as connection:
            rows = connection.execute(
                select(key, _state.c.value).where(key.startswith(STOPPED_PREFIX, autoescape=True))
            ).all()
        return {name.removeprefix(STOPPED_PREFIX): _parsed(value) for name, value in rows}

    def forget_stopped_containers(self, container_ids: Iterable[str]) -> int:
        """Drop the records of these containers (reconciled); how many there were."""
        keys = sorted({STOPPED_PREFIX + container_id for container_id in container_ids})
        if not keys:
            return 0
        with self.db.write() as connection:
            return connection.execute(delete(_state).where(_state.c.key.in_(keys))).rowcount
