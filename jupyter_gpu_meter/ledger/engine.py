"""The ledger's database: its URL, the engine, transactions, and the schema's revision.

Every store of the ledger (:mod:`.sessions`, :mod:`.rollups`, :mod:`.state`,
:mod:`.decisions`, :mod:`.budgets`, :mod:`.storage`) works through one
:class:`Database`: short transactions of its own, blocking, so call them off
the event loop. A write that fails (database down, locked) raises; the writes
are idempotent, so the caller retries (see :class:`~.buffer.WriteBuffer`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from ..clock import utcnow
from . import schema

log = logging.getLogger(__name__)

#: a file next to where the service runs, like jupyterhub.sqlite
DEFAULT_URL = "sqlite:///jupyter_gpu_meter.sqlite"
#: the environment variable that names the ledger when no setting does
DB_URL_ENV = "JUPYTER_GPU_METER_DB_URL"
#: the databases the ledger is tested on
SUPPORTED = ("sqlite", "postgresql")
#: the execution option that makes SQLite take its write lock at BEGIN
_WRITE = "jupyter_gpu_meter_write"
#: one key for PostgreSQL's advisory lock around schema changes ("jgm-ledger")
_SCHEMA_LOCK = 0x6A676D2D6C6564
#: the longest reason, outcome or note the ledger takes, in characters
LONG_TEXT = 1 << 16


def default_url(config: Mapping | None = None) -> str:
    """The ledger's URL where none is set: the one rule for the meter, the spawner and the CLI.

    ``c.MeterService.db_url`` from `config` (the hub's config, which the
    spawner and the CLI read; the meter's own setting is that value), else
    the environment variable ``JUPYTER_GPU_METER_DB_URL``, else
    :data:`DEFAULT_URL`, a SQLite file in the working directory.
    """
    configured = (config or {}).get("MeterService", {}).get("db_url")
    return configured or os.environ.get(DB_URL_ENV) or DEFAULT_URL


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


def aware(name: str, value: datetime) -> datetime:
    """`value` in UTC; a ValueError naming `name` for anything but an aware datetime."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} {value!r} refused: the ledger takes timezone-aware UTC datetimes, "
            "e.g. jupyter_gpu_meter.clock.utcnow()"
        )
    return value.astimezone(timezone.utc)


def checked_text(name: str, value, *, most: int = 255, empty: bool = True) -> str:
    """`value` if it is a string of at most `most` characters (not empty, unless `empty`)."""
    if not isinstance(value, str) or (not empty and not value) or len(value) > most:
        allowed = "a string" if empty else "a non-empty string"
        raise ValueError(
            f"{name} {value!r} is not allowed: give {allowed} of at most {most} characters"
        )
    return value


class Database:
    """One ledger database: the engine, its transactions, the clock, the schema's revision.

    Nothing connects until the first call. `lock_timeout` (seconds) is how
    long a statement waits for a lock before it fails and the caller retries.
    The stores share one instance; it holds no state of its own apart from
    the engine's pool.
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
        #: the dialect's INSERT, for ``on_conflict_do_…`` upserts
        self.insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert

    @property
    def url(self) -> str:
        """The database URL with its password hidden, for logs and messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()

    def write(self):
        """A write transaction (SQLite: its lock taken at BEGIN)."""
        return self._writer.begin()

    def read(self):
        """A connection for reads."""
        return self.engine.connect()

    def snapshot(self):
        """A connection whose statements all see the same moment of the database.

        SQLite: one transaction does (WAL). PostgreSQL: REPEATABLE READ.
        """
        connection = self.engine.connect()
        if self.dialect == "postgresql":
            connection.execution_options(isolation_level="REPEATABLE READ")
        return connection

    # --- schema -----------------------------------------------------------

    def _lock_schema(self, connection) -> None:
        if self.dialect == "postgresql":  # one schema change at a time, across processes
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})

    def upgrade(self) -> None:
        """Migrate the database to this code's schema (creating it if empty)."""
        with self.write() as connection:
            self._lock_schema(connection)
            schema.upgrade(connection)

    def check_revision(self) -> None:
        """Raise LedgerSchemaError, saying what to run, unless the schema is current."""
        with self.read() as connection:
            schema.check(connection, self.url)

    def ensure_schema(self) -> bool:
        """Create the tables in an empty database; True if it did.

        A database with an older or newer schema is never migrated here: that
        raises LedgerSchemaError naming the command to run, after a backup.
        """
        with self.write() as connection:
            self._lock_schema(connection)
            if schema.is_empty(connection):
                log.info("Creating the ledger's tables in %s", self.url)
                schema.upgrade(connection)
                return True
            schema.check(connection, self.url)
            return False
