"""The ledger store: sessions, per-minute rollups and the meter's state in one database.

Every method is blocking and uses a short transaction of its own: call them
off the event loop. A write that fails (database down, locked) raises; the
writes are idempotent, so the caller retries (see :class:`WriteBuffer`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

from sqlalchemy import (
    Engine,
    bindparam,
    case,
    create_engine,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from ..clock import utcnow
from ..pricing import PriceSnapshot
from . import schema
from .models import RollupModel, SessionModel, StateModel
from .records import Rollup, RollupRow, SessionRecord, truncate_to_minute
from .types import UTCDateTime

log = logging.getLogger(__name__)

#: a file next to where the service runs, like jupyterhub.sqlite
DEFAULT_URL = "sqlite:///jupyter_gpu_meter.sqlite"
#: the databases the ledger is tested on
SUPPORTED = ("sqlite", "postgresql")
#: the execution option that makes SQLite take its write lock at BEGIN
_WRITE = "jupyter_gpu_meter_write"
#: one key for PostgreSQL's advisory lock around schema changes ("jgm-ledger")
_SCHEMA_LOCK = 0x6A676D2D6C6564

_sessions = SessionModel.__table__
_rollups = RollupModel.__table__
_state = StateModel.__table__


def make_engine(url: str, *, lock_timeout: float = 10.0) -> Engine:
    """An engine for `url` set up for the ledger; it connects only when first used.

    SQLite: WAL journal (readers never block the writer), foreign keys on,
    `lock_timeout` seconds of busy waiting, and real transactions (``BEGIN
    IMMEDIATE`` for writes, so a write never fails half-way on a lock upgrade).
    PostgreSQL: connections checked before use, ``lock_timeout`` set.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED:
        raise ValueError(
            f"ledger database {parsed.render_as_string(hide_password=True)!r} is not supported: "
            "use SQLite (e.g. 'sqlite:///jupyter_gpu_meter.sqlite') or PostgreSQL "
            "(e.g. 'postgresql+psycopg://user:password@host/dbname')"
        )
    timeout_ms = max(int(lock_timeout * 1000), 1)
    if backend == "sqlite":
        engine = create_engine(parsed)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, record):
            # let SQLAlchemy, not the sqlite3 module, decide when transactions begin
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection):
            write = connection.get_execution_options().get(_WRITE)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    else:
        engine = create_engine(parsed, pool_pre_ping=True)

        @event.listens_for(engine, "connect")
        def _postgresql_connect(dbapi_connection, record):
            autocommit = dbapi_connection.autocommit
            dbapi_connection.autocommit = True
            cursor = dbapi_connection.cursor()
            cursor.execute(f"SET lock_timeout = {timeout_ms}")
            cursor.close()
            dbapi_connection.autocommit = autocommit

    return engine


def _aware(name: str, value: datetime) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} {value!r} refused: the ledger takes timezone-aware UTC datetimes, "
            "e.g. jupyter_gpu_meter.clock.utcnow()"
        )
    return value.astimezone(timezone.utc)


def _record(row) -> SessionRecord:
    return SessionRecord(
        id=row.id,
        container_id=row.container_id,
        user=row.username,
        server=row.server,
        gpu_uuids=tuple(uuid for uuid in row.gpu_uuids.split(",") if uuid),
        gpu_model=row.gpu_model,
        profile=row.profile,
        price=PriceSnapshot(
            gpu_model=row.gpu_model,
            gpus=row.gpu_count,
            price_per_gpu_hour=row.price_per_gpu_hour,
            cpu_price_per_hour=row.cpu_price_per_hour,
            currency=row.currency,
            billing_increment_s=row.billing_increment_s,
            minimum_charge=row.minimum_charge,
        ),
        started_at=row.started_at,
        ended_at=row.ended_at,
        end_reason=row.end_reason,
        last_seen_at=row.last_seen_at,
    )


class Ledger:
    """Sessions, rollups and meter state in a SQLite file or a PostgreSQL database.

    ``Ledger("sqlite:///jupyter_gpu_meter.sqlite")`` or
    ``Ledger("postgresql+psycopg://jgm:secret@db/jgm")``. Nothing connects
    until the first call. `lock_timeout` (seconds) is how long a statement
    waits for a lock before it fails and the caller retries.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        clock: Callable[[], datetime] = utcnow,
        lock_timeout: float = 10.0,
    ):
        self.engine = make_engine(url, lock_timeout=lock_timeout)
        self._writer = self.engine.execution_options(**{_WRITE: True})
        self.clock = clock
        self.dialect = self.engine.dialect.name
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert

    @property
    def url(self) -> str:
        """The database URL with its password hidden, for logs and messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def __repr__(self):
        return f"<Ledger {self.url}>"

    def close(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _write(self):
        return self._writer.begin()

    def _read(self):
        return self.engine.connect()

    # --- schema -----------------------------------------------------------

    def _lock_schema(self, connection) -> None:
        if self.dialect == "postgresql":  # one schema change at a time, across processes
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})

    def upgrade(self) -> None:
        """Migrate the database to this code's schema (creating it if empty)."""
        with self._write() as connection:
            self._lock_schema(connection)
            schema.upgrade(connection)

    def check_revision(self) -> None:
        """Raise LedgerSchemaError, saying what to run, unless the schema is current."""
        with self._read() as connection:
            schema.check(connection, self.url)

    def ensure_schema(self) -> bool:
        """Create the tables in an empty database; True if it did.

        A database with an older or newer schema is never migrated here: that
        raises LedgerSchemaError naming the command to run, after a backup.
        """
        with self._write() as connection:
            self._lock_schema(connection)
            if schema.is_empty(connection):
                log.info("Creating the ledger's tables in %s", self.url)
                schema.upgrade(connection)
                return True
            schema.check(connection, self.url)
            return False

    # --- sessions ---------------------------------------------------------

    def open_session(
        self,
        *,
        container_id: str,
        user: str,
        server: str,
        gpu_uuids: Iterable[str],
        gpu_model: str,
        profile: str,
        price: PriceSnapshot,
        started_at: datetime,
    ) -> bool:
        """Record that a container started; True if it is new.

        Idempotent on `container_id`: a second call returns False and changes
        nothing, even with different values.
        """
        started_at = _aware("started_at", started_at)
        if isinstance(gpu_uuids, str):
            raise TypeError(f"gpu_uuids must be a list of UUIDs, not the string {gpu_uuids!r}")
        uuids = tuple(gpu_uuids)
        if not container_id:
            raise ValueError("container_id is empty")
        if any(not uuid or "," in uuid for uuid in uuids):
            raise ValueError(f"GPU UUIDs {uuids!r}: each must be non-empty, without commas")
        if (price.gpus, price.gpu_model) != (len(uuids), gpu_model):
            raise ValueError(
                f"price snapshot for {price.gpus} x {price.gpu_model!r} does not match the "
                f"session's {len(uuids)} x {gpu_model!r}: take it with "
                "Pricing.snapshot(gpu_model, len(gpu_uuids))"
            )
        statement = (
            self._insert(_sessions)
            .values(
                container_id=container_id,
                username=user,
                server=server,
                gpu_uuids=",".join(uuids),
                gpu_count=len(uuids),
                gpu_model=gpu_model,
                profile=profile,
                price_per_gpu_hour=price.price_per_gpu_hour,
                cpu_price_per_hour=price.cpu_price_per_hour,
                currency=price.currency,
                billing_increment_s=price.billing_increment_s,
                minimum_charge=price.minimum_charge,
                started_at=started_at,
                last_seen_at=started_at,
            )
            .on_conflict_do_nothing(index_elements=["container_id"])
            .inline()  # no RETURNING of the new id: rowcount says whether a row was added
        )
        with self._write() as connection:
            result = connection.execute(statement, execution_options={"preserve_rowcount": True})
            return result.rowcount == 1

    def close_session(self, container_id: str, *, ended_at: datetime, reason: str) -> bool:
        """Record that a container stopped; True if it closed an open session.

        Unknown or already closed sessions are left alone (False). An end
        before the start is taken as the start: a session never lasts < 0 s.
        """
        ended = bindparam("ended", _aware("ended_at", ended_at), type_=UTCDateTime())
        statement = (
            update(_sessions)
            .where(_sessions.c.container_id == container_id, _sessions.c.ended_at.is_(None))
            .values(
                ended_at=case(
                    (_sessions.c.started_at > ended, _sessions.c.started_at), else_=ended
                ),
                end_reason=reason,
            )
        )
        with self._write() as connection:
            return connection.execute(statement).rowcount == 1

    def touch_sessions(self, container_ids: Iterable[str], at: datetime) -> int:
        """Note that these containers were seen running at `at`; how many sessions moved on.

        Only open sessions, and only forward in time.
        """
        ids = sorted(set(container_ids))
        at = _aware("at", at)
        if not ids:
            return 0
        statement = (
            update(_sessions)
            .where(
                _sessions.c.container_id.in_(ids),
                _sessions.c.ended_at.is_(None),
                _sessions.c.last_seen_at < at,
            )
            .values(last_seen_at=at)
        )
        with self._write() as connection:
            return connection.execute(statement).rowcount

    def get_session(self, container_id: str) -> SessionRecord | None:
        with self._read() as connection:
            row = connection.execute(
                select(_sessions).where(_sessions.c.container_id == container_id)
            ).first()
        return _record(row) if row else None

    def open_sessions(self) -> list[SessionRecord]:
        """Sessions with no end yet, oldest first."""
        return self._select_sessions(_sessions.c.ended_at.is_(None))

    def sessions(
        self,
        *,
        user: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[SessionRecord]:
        """Sessions that overlap [since, until), running ones included, oldest first."""
        conditions = []
        if user is not None:
            conditions.append(_sessions.c.username == user)
        if since is not None:
            since = _aware("since", since)
            conditions.append(or_(_sessions.c.ended_at.is_(None), _sessions.c.ended_at > since))
        if until is not None:
            conditions.append(_sessions.c.started_at < _aware("until", until))
        return self._select_sessions(*conditions)

    def _select_sessions(self, *conditions) -> list[SessionRecord]:
        statement = (
            select(_sessions).where(*conditions).order_by(_sessions.c.started_at, _sessions.c.id)
        )
        with self._read() as connection:
            return [_record(row) for row in connection.execute(statement)]

    # --- rollups ----------------------------------------------------------

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
            _aware("minute", row.minute)
            if row.samples < 0 or not row.writer or not row.gpu_uuid:
                raise ValueError(f"{row!r}: needs samples >= 0, a writer and a GPU UUID")
        if not rows:
            return []
        statement = self._insert(_rollups)
        key = ("session_id", "gpu_uuid", "minute", "writer")
        statement = statement.on_conflict_do_update(
            index_elements=list(key),
            set_={
                name: statement.excluded[name]
                for name in ("samples", "util_mean", "util_max", "memory_max_bytes")
            },
        )
        with self._write() as connection:
            session_ids = dict(
                connection.execute(
                    select(_sessions.c.container_id, _sessions.c.id).where(
                        _sessions.c.container_id.in_({row.container_id for row in rows})
                    )
                ).all()
            )
            values, unplaced = {}, []
            for row in rows:
                if row.container_id not in session_ids:
                    unplaced.append(row)
                    continue
                value = {
                    "session_id": session_ids[row.container_id],
                    "gpu_uuid": row.gpu_uuid,
                    "minute": truncate_to_minute(row.minute.astimezone(timezone.utc)),
                    "writer": row.writer,
                    "samples": int(row.samples),
                    "util_mean": float(row.util_mean),
                    "util_max": int(row.util_max),
                    "memory_max_bytes": int(row.memory_max_bytes),
                }
                # one statement may not touch a row twice: the last row for a key wins
                values[tuple(value[name] for name in key)] = value
            if values:
                connection.execute(statement, list(values.values()))
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
            )
            .join(_sessions, _sessions.c.id == r.session_id)
            .where(_sessions.c.container_id == container_id)
            .group_by(r.gpu_uuid, r.minute)
            .order_by(r.minute, r.gpu_uuid)
        )
        with self._read() as connection:
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
                )
                for row in connection.execute(statement)
            ]

    # --- meter state --------------------------------------------------------

    def get_state(self, key: str) -> str | None:
        with self._read() as connection:
            return connection.execute(
                select(_state.c.value).where(_state.c.key == key)
            ).scalar_one_or_none()

    def set_state(self, key: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"state {key!r}: value must be a str, got {value!r}")
        statement = self._insert(_state).values(key=key, value=value, updated_at=self.clock())
        statement = statement.on_conflict_do_update(
            index_elements=["key"],
            set_={"value": statement.excluded.value, "updated_at": statement.excluded.updated_at},
        )
        with self._write() as connection:
            connection.execute(statement)
