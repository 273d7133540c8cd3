"""The meter's state between runs: small facts by key (``meter_state``)."""

from __future__ import annotations

from sqlalchemy import select

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
