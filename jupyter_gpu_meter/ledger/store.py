"""The ledger store: sessions, rollups, meter state, policy decisions and budgets in one database.

Every method is blocking and uses a short transaction of its own: call them
off the event loop. A write that fails (database down, locked) raises; the
writes are idempotent, so the caller retries (see :class:`WriteBuffer`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from decimal import Decimal

from sqlalchemy import (
    Engine,
    Integer,
    String,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    false,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from .. import budgets as _budgets
from .. import budgets as budget_rules
from ..clock import utcnow
from ..pricing import PriceSnapshot, parse_currency, parse_money, session_sums, storage_sums
from . import schema
from .models import (
    BudgetChangeModel,
    BudgetModel,
    DecisionModel,
    RollupModel,
    SessionModel,
    StateModel,
    StoragePeriodModel,
)
from .records import (
    BudgetChange,
    BudgetRecord,
    DecisionRecord,
    MinuteUtilization,
    Rollup,
    RollupRow,
    SessionRecord,
    StoragePeriod,
    StorageSum,
    UsageSum,
    truncate_to_minute,
)
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
#: the longest reason, outcome or note the ledger takes, in characters
_LONG = 1 << 16

_sessions = SessionModel.__table__
_rollups = RollupModel.__table__
_state = StateModel.__table__
_decisions = DecisionModel.__table__
_budgets_table = BudgetModel.__table__
_changes = BudgetChangeModel.__table__
_storage = StoragePeriodModel.__table__
#: the meter_state key of the last storage measurement's time
STORAGE_MEASURED_KEY = "storage-measured-at"


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


@functools.lru_cache(maxsize=4096)
def _price(*values) -> PriceSnapshot:
    """One checked snapshot per distinct price: the ledger holds few of them."""
    return PriceSnapshot(*values)


def _record(row) -> SessionRecord:
    return SessionRecord(
        id=row.id,
        container_id=row.container_id,
        user=row.username,
        server=row.server,
        gpu_uuids=tuple(uuid for uuid in row.gpu_uuids.split(",") if uuid),
        gpu_model=row.gpu_model,
        profile=row.profile,
        price=_price(
            row.gpu_model,
            row.gpu_count,
            row.price_per_gpu_hour,
            row.cpu_price_per_hour,
            row.currency,
            row.billing_increment_s,
            row.minimum_charge,
        ),
        started_at=row.started_at,
        ended_at=row.ended_at,
        end_reason=row.end_reason,
        last_seen_at=row.last_seen_at,
    )


def _overlapping(user: str | None, since: datetime | None, until: datetime | None) -> list:
    """Conditions on sessions: `user`'s, overlapping [since, until)."""
    conditions = []
    if user is not None:
        conditions.append(_sessions.c.username == user)
    if since is not None:
        since = _aware("since", since)
        conditions.append(or_(_sessions.c.ended_at.is_(None), _sessions.c.ended_at > since))
    if until is not None:
        conditions.append(_sessions.c.started_at < _aware("until", until))
    return conditions


#: each user, the end of their latest closed session, how many of theirs run
_LAST_ACTIVE = text(
    """
    WITH RECURSIVE users(name) AS (
        SELECT min(username) FROM sessions
        UNION ALL
        SELECT (SELECT min(username) FROM sessions WHERE username > users.name)
        FROM users WHERE users.name IS NOT NULL
    )
    SELECT name,
        (SELECT max(ended_at) FROM sessions WHERE username = users.name) AS ended_at,
        (SELECT count(*) FROM sessions WHERE username = users.name AND ended_at IS NULL)
            AS running
    FROM users WHERE name IS NOT NULL
    """
).columns(name=String(), ended_at=UTCDateTime(), running=Integer())


def _overlaps(session: SessionRecord, since: datetime | None, until: datetime | None) -> bool:
    """Whether `session` may have a part inside [since, until) (a running one: until now)."""
    if until is not None and session.started_at >= until:
        return False
    return since is None or session.ended_at is None or session.ended_at > since


def _sum_in_python(rows) -> list[tuple]:
    """(user, currency, count, GPU-microseconds, charge units) from unsummed rows."""
    sums: dict[tuple[str, str], list[int]] = {}
    for user, currency, gpu_us, units in rows:
        entry = sums.setdefault((user, currency), [0, 0, 0])
        entry[0] += 1
        entry[1] += gpu_us
        entry[2] += units
    return [(*key, *entry) for key, entry in sorted(sums.items())]


def _text(name: str, value, *, most: int = 255, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value) or len(value) > most:
        allowed = "a string" if empty else "a non-empty string"
        raise ValueError(
            f"{name} {value!r} is not allowed: give {allowed} of at most {most} characters"
        )
    return value


def _storage_record(row) -> StoragePeriod:
    return StoragePeriod(
        user=row.username,
        volume=row.volume,
        kind=row.kind,
        started_at=row.started_at,
        ended_at=row.ended_at,
        size_bytes=row.size_bytes,
        price_per_gb_month=row.price_per_gb_month,
        currency=row.currency,
    )


def _budget_record(row) -> BudgetRecord:
    return BudgetRecord(
        scope=row.scope,
        name=row.name,
        amount=row.amount,
        unit=row.unit,
        currency=row.currency,
        period=row.period,
        updated_at=row.updated_at,
        updated_by=row.updated_by,
    )


def _change_record(row) -> BudgetChange:
    return BudgetChange(
        id=row.id,
        at=row.at,
        by=row.changed_by,
        scope=row.scope,
        name=row.name,
        change=row.change,
        amount=row.amount,
        unit=row.unit,
        currency=row.currency,
        period=row.period,
        note=row.note,
    )


def _decision_record(row) -> DecisionRecord:
    return DecisionRecord(
        id=row.id,
        at=row.at,
        user=row.username,
        server=row.server,
        container_id=row.container_id,
        policy=row.policy,
        action=row.action,
        reason=row.reason,
        dry_run=bool(row.dry_run),
        outcome=row.outcome,
    )


class Ledger:
    """Sessions, rollups, meter state, decisions and budgets in SQLite or PostgreSQL.

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

    def _snapshot(self):
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
        The session's GPU time and charge are stored with its end, for totals.
        """
        ended_at = _aware("ended_at", ended_at)
        if len(reason) > 255:  # the column's width; a policy's reason can be long
            reason = reason[:254] + "…"
        is_open = (_sessions.c.container_id == container_id, _sessions.c.ended_at.is_(None))
        with self._write() as connection:
            row = connection.execute(select(_sessions).where(*is_open)).first()
            if row is None:
                return False
            session = _record(row)
            ended_at = max(ended_at, session.started_at)
            gpu_us, units = session_sums(session.price, session.started_at, ended_at)
            statement = (
                update(_sessions)
                .where(*is_open)
                .values(
                    ended_at=ended_at,
                    end_reason=reason,
                    gpu_microseconds=gpu_us,
                    charge_units=units,
                )
            )
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

    def open_sessions(self, *, user: str | None = None) -> list[SessionRecord]:
        """Sessions with no end yet (`user`'s only, when given), oldest first."""
        conditions = [_sessions.c.ended_at.is_(None)]
        if user is not None:
            conditions.append(_sessions.c.username == user)
        with self._read() as connection:
            return self._select_sessions(connection, conditions)

    def history(
        self,
        *,
        user: str,
        now: datetime,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int,
        offset: int = 0,
    ) -> tuple[int, list[SessionRecord]]:
        """(how many, one page) of `user`'s sessions with a part inside [since, until),
        newest first; running sessions last until `now`, sessions without duration
        are left out."""
        c = _sessions.c
        closed = [c.ended_at.is_not(None), c.ended_at > c.started_at]
        running = [c.ended_at.is_(None), c.started_at < _aware("now", now)]
        if since is not None:
            since = _aware("since", since)
            closed.append(c.ended_at > since)
            if since >= now:
                running.append(false())
        if until is not None:
            until = _aware("until", until)
            closed.append(c.started_at < until)
            running.append(c.started_at < until)
        where = (c.username == user, or_(and_(*closed), and_(*running)))
        page = (
            select(_sessions)
            .where(*where)
            .order_by(c.started_at.desc(), c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self._snapshot() as connection:
            total = connection.execute(select(func.count()).where(*where)).scalar_one()
            return total, [_record(row) for row in connection.execute(page)]

    def sessions(
        self,
        *,
        user: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[SessionRecord]:
        """Sessions that overlap [since, until), running ones included, oldest first."""
        with self._read() as connection:
            return self._select_sessions(connection, _overlapping(user, since, until))

    def usage_sums(
        self,
        *,
        user: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[list[UsageSum], list[SessionRecord]]:
        """Usage over [since, until), split so the database adds up what it can.

        Returns (sums, sessions): the closed sessions wholly inside the range,
        added up per user and currency by the database; and every other
        session that overlaps the range (running, crossing one of its edges,
        or without stored sums), oldest first. Together they are what
        :func:`jupyter_gpu_meter.report.usage_by_user` totals, with ``sums=``.
        """
        c = _sessions.c
        since = None if since is None else _aware("since", since)
        until = None if until is None else _aware("until", until)
        mine = [] if user is None else [c.username == user]
        # closed, lasted, summed (charge_units and gpu_microseconds are null together)
        inside = [*mine, c.charge_units.is_not(None), c.ended_at > c.started_at]
        # the rest, in pieces that each have an index: running or unsummed, crossing an edge
        pieces = [[*mine, c.charge_units.is_(None)]]
        for edge in (since, until):
            if edge is not None:
                pieces.append([*mine, c.ended_at > edge, c.started_at < edge])
        if since is not None:
            inside.append(c.started_at >= since)
        if until is not None:
            inside.append(c.ended_at <= until)
        keys = (c.currency, c.username)  # currency first: no index tempts SQLite's planner
        summed = select(
            c.username,
            c.currency,
            func.count(),
            func.sum(c.gpu_microseconds),
            func.sum(c.charge_units),
        ).where(*inside)
        if user is None:
            # SQLite plans without statistics; these are the plans measured fastest
            # (docs/benchmarks.md): the month's sessions by their start, or every row
            hint = "NOT INDEXED" if since is None else "INDEXED BY ix_sessions_started_at"
            summed = summed.with_hint(_sessions, hint, "sqlite")
        found: dict[int, SessionRecord] = {}
        with self._snapshot() as connection:
            try:
                rows = connection.execute(summed.group_by(*keys)).all()
            except OperationalError as e:
                if "integer overflow" not in str(e):  # SQLite's SUM stops at 64 bits
                    raise
                connection.rollback()
                rows = _sum_in_python(
                    connection.execute(
                        select(c.username, c.currency, c.gpu_microseconds, c.charge_units).where(
                            *inside
                        )
                    )
                )
            for piece in pieces:
                for row in connection.execute(select(_sessions).where(*piece)):
                    found[row.id] = _record(row)
        sums = sorted(
            (UsageSum(u, cur, int(n), int(us), int(units)) for u, cur, n, us, units in rows),
            key=lambda part: (part.user, part.currency),
        )
        others = sorted(
            (s for s in found.values() if _overlaps(s, since, until)),
            key=lambda s: (s.started_at, s.id),
        )
        return sums, others

    def last_active(self, now: datetime) -> dict[str, datetime]:
        """user -> the end of their latest session, `now` while one of theirs runs.

        One index seek per user (a loose index scan over (username, ended_at)),
        not a pass over every session: 11 ms instead of 190 ms for 1,000 users
        with a million sessions on SQLite.
        """
        with self._read() as connection:
            rows = connection.execute(_LAST_ACTIVE).all()
        return {
            user: max(filter(None, (ended, now if running else None)))
            for user, ended, running in rows
        }

    def _select_sessions(self, connection, conditions) -> list[SessionRecord]:
        # sorted here, not in SQL: an ORDER BY started_at makes SQLite walk a user's
        # every session in start order instead of searching the index on their end
        records = [_record(row) for row in connection.execute(select(_sessions).where(*conditions))]
        records.sort(key=lambda session: (session.started_at, session.id))
        return records

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
        with self._read() as connection:
            for container_id, minute, samples, util_sum in connection.execute(statement):
                result[container_id].append(
                    MinuteUtilization(minute, int(samples), float(util_sum))
                )
        return result

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

    # --- storage --------------------------------------------------------------

    def add_storage_periods(self, periods: Iterable[StoragePeriod], measured_at: datetime) -> int:
        """Record one measuring pass: its periods, and `measured_at` as the last pass's
        time (what :meth:`storage_now` shows); how many periods were written.

        A period that follows its volume's last one at the same size, price
        and owner extends that row instead of adding one, so an idle home
        costs a row per change, not one per measurement. A period that
        overlaps what the volume already has is skipped: no time is billed
        twice, and a retried write changes nothing.
        """
        measured_at = _aware("measured_at", measured_at)
        values = []
        for period in periods:
            started_at = _aware("started_at", period.started_at)
            ended_at = _aware("ended_at", period.ended_at)
            if ended_at <= started_at:
                raise ValueError(f"{period!r}: a storage period must end after it starts")
            values.append(
                {
                    "username": _text("user", period.user, empty=False),
                    "volume": _text("volume", period.volume, empty=False),
                    "kind": _text("kind", period.kind, most=16, empty=False),
                    "started_at": started_at,
                    "ended_at": ended_at,
                    "size_bytes": period.size_bytes,
                    "price_per_gb_month": parse_money(
                        period.price_per_gb_month, "price_per_gb_month"
                    ),
                    "currency": parse_currency(period.currency),
                }
            )
        state = self._insert(_state).values(
            key=STORAGE_MEASURED_KEY, value=measured_at.isoformat(), updated_at=measured_at
        )
        state = state.on_conflict_do_update(
            index_elements=["key"],
            set_={"value": state.excluded.value, "updated_at": state.excluded.updated_at},
        )
        c = _storage.c
        same = ("username", "kind", "size_bytes", "price_per_gb_month", "currency")
        written = 0
        with self._write() as connection:
            for value in values:
                last = connection.execute(
                    select(_storage)
                    .where(c.volume == value["volume"])
                    .order_by(c.ended_at.desc())
                    .limit(1)
                ).first()
                if last is not None and last.ended_at > value["started_at"]:
                    continue  # already billed
                if (
                    last is not None
                    and last.ended_at == value["started_at"]
                    and all(getattr(last, key) == value[key] for key in same)
                ):
                    byte_hours, units = storage_sums(
                        value["size_bytes"],
                        last.started_at,
                        value["ended_at"],
                        value["price_per_gb_month"],
                    )
                    connection.execute(
                        update(_storage)
                        .where(c.id == last.id)
                        .values(
                            ended_at=value["ended_at"],
                            byte_hours=byte_hours,
                            charge_units=units,
                        )
                    )
                else:
                    byte_hours, units = storage_sums(
                        value["size_bytes"],
                        value["started_at"],
                        value["ended_at"],
                        value["price_per_gb_month"],
                    )
                    connection.execute(
                        _storage.insert().values(**value, byte_hours=byte_hours, charge_units=units)
                    )
                written += 1
            connection.execute(state)
        return written

    def storage_ends(self, volumes: Iterable[str]) -> dict[str, datetime]:
        """volume -> the end of its last recorded period, for the volumes that have one.

        One index seek per volume (SQLite answers ``max`` from the index on
        (volume, ended_at) only for a single volume): 1,000 volumes in
        milliseconds, not a scan of their every period.
        """
        latest = (
            select(func.max(_storage.c.ended_at))
            .where(_storage.c.volume == bindparam("name"))
            .scalar_subquery()
        )
        ends = {}
        with self._read() as connection:
            for name in sorted(set(volumes)):
                end = connection.execute(select(latest), {"name": name}).scalar()
                if end is not None:
                    ends[name] = end
        return ends

    def storage_periods(
        self,
        *,
        user: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[StoragePeriod]:
        """Storage periods overlapping [since, until), oldest first."""
        c = _storage.c
        conditions = [] if user is None else [c.username == user]
        if since is not None:
            conditions.append(c.ended_at > _aware("since", since))
        if until is not None:
            conditions.append(c.started_at < _aware("until", until))
        statement = select(_storage).where(*conditions).order_by(c.ended_at, c.volume)
        with self._read() as connection:
            return [_storage_record(row) for row in connection.execute(statement)]

    def storage_sums(
        self,
        *,
        user: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        by_volume: bool = False,
    ) -> list[StorageSum]:
        """Storage per user and currency over [since, until): byte-hours and charge units.

        `by_volume`: per user, volume and price instead (invoice lines), with
        the first and last time billed. Periods wholly inside the range are
        added up by the database; the few crossing an edge (or too large for
        64 bits) are clipped here.
        """
        c = _storage.c
        since = None if since is None else _aware("since", since)
        until = None if until is None else _aware("until", until)
        mine = [] if user is None else [c.username == user]
        inside = [*mine, c.charge_units.is_not(None)]
        pieces = [[*mine, c.charge_units.is_(None)]]
        if since is not None:
            inside.append(c.started_at >= since)
            pieces.append([*mine, c.ended_at > since, c.started_at < since])
        if until is not None:
            inside.append(c.ended_at <= until)
            pieces.append([*mine, c.ended_at > until, c.started_at < until])
        keys = [c.username, c.currency]
        if by_volume:
            keys += [c.volume, c.kind, c.price_per_gb_month]
        summed = (
            select(
                *keys,
                func.sum(c.byte_hours),
                func.sum(c.charge_units),
                func.min(c.started_at),
                func.max(c.ended_at),
            )
            .where(*inside)
            .group_by(*keys)
        )
        totals: dict[tuple, list] = {}

        def add(key, byte_hours, units, first, last):
            entry = totals.setdefault(key, [0, 0, first, last])
            entry[0] += byte_hours
            entry[1] += units
            entry[2], entry[3] = min(entry[2], first), max(entry[3], last)

        found: dict[int, StoragePeriod] = {}
        with self._snapshot() as connection:
            for *key, byte_hours, units, first, last in connection.execute(summed):
                add(tuple(key), int(byte_hours), int(units), first, last)
            for piece in pieces:
                for row in connection.execute(select(_storage).where(*piece)):
                    found[row.id] = _storage_record(row)
        for period in found.values():
            span = period.part(since, until)
            if span is not None:
                key = (period.user, period.currency)
                if by_volume:
                    key += (period.volume, period.kind, period.price_per_gb_month)
                add(key, *period.sums(since, until), *span)
        return [
            StorageSum(*key[:2], byte_hours, units, first, last, *key[2:])
            for key, (byte_hours, units, first, last) in sorted(totals.items())
        ]

    def storage_now(self, *, user: str | None = None) -> tuple[datetime | None, list]:
        """(when the last pass measured, the volumes it measured, by user and name).

        A volume deleted since is not among them: its last period ended earlier.
        """
        with self._read() as connection:
            at = connection.execute(
                select(_state.c.value).where(_state.c.key == STORAGE_MEASURED_KEY)
            ).scalar_one_or_none()
            if at is None:
                return None, []
            measured_at = datetime.fromisoformat(at)
            conditions = [_storage.c.ended_at == measured_at]
            if user is not None:
                conditions.append(_storage.c.username == user)
            rows = connection.execute(select(_storage).where(*conditions))
            periods = sorted(
                (_storage_record(row) for row in rows), key=lambda p: (p.user, p.volume)
            )
        return measured_at, periods

    # --- policy decisions -----------------------------------------------------

    def user_budget_status(self, user: str, groups, now: datetime):
        """The budget that applies to `user` (own, else their groups') and how much is left.

        None when no budget applies. Reads only this period's sessions.
        """
        budget = budget_rules.effective_budget(user, groups, self.budgets())
        if budget is None:
            return None
        since = budget_rules.period_start(budget.period, now)
        return budget_rules.budget_status(
            budget,
            self.budget_changes(),
            self.sessions(user=user, since=since),
            now=now,
            user=user,
            storage=self.storage_sums(user=user, since=since, until=now),
        )

    def record_decision(
        self,
        *,
        at: datetime,
        user: str,
        server: str,
        container_id: str,
        policy: str,
        action: str,
        reason: str,
        dry_run: bool,
        outcome: str,
    ) -> int:
        """Record what a policy decided about a server and what came of it; the row's id.

        Idempotent on (container_id, policy, at): writing the same decision
        again (a retried write) adds nothing and returns the first row's id.
        """
        at = _aware("at", at)
        if not isinstance(dry_run, bool):
            raise TypeError(f"dry_run must be True or False, got {dry_run!r}")
        values = {
            "at": at,
            "username": _text("user", user, empty=False),
            "server": _text("server", server),
            "container_id": _text("container_id", container_id, most=128),
            "policy": _text("policy", policy, most=64, empty=False),
            "action": _text("action", action, most=64, empty=False),
            "reason": _text("reason", reason, most=_LONG),
            "dry_run": dry_run,
            "outcome": _text("outcome", outcome, most=_LONG),
        }
        statement = (
            self._insert(_decisions)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["container_id", "policy", "at"])
        )
        key = select(_decisions.c.id).where(
            _decisions.c.container_id == container_id,
            _decisions.c.policy == policy,
            _decisions.c.at == at,
        )
        with self._write() as connection:
            connection.execute(statement)
            return connection.execute(key).scalar_one()

    def decisions(
        self,
        *,
        user: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[DecisionRecord]:
        """Recorded decisions, newest first: at most `limit`, at or after `since`."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit {limit!r} is not allowed: give a whole number >= 1")
        d = _decisions.c
        conditions = []
        if user is not None:
            conditions.append(d.username == user)
        if since is not None:
            conditions.append(d.at >= _aware("since", since))
        statement = select(_decisions).where(*conditions).order_by(d.at.desc(), d.id.desc())
        with self._read() as connection:
            rows = connection.execute(statement.limit(limit))
            return [_decision_record(row) for row in rows]

    # --- budgets ------------------------------------------------------------------

    def set_budget(
        self,
        *,
        scope: str,
        name: str,
        amount,
        unit: str,
        period: str,
        currency: str | None = None,
        by: str,
        at: datetime,
    ) -> bool:
        """Set the budget of a user or of each member of a group; True if it changed.

        `amount` per `period` ("month" or "rolling:<days>") in `unit`
        ("money", with an ISO 4217 `currency`, or "gpu-hours"). Replaces the
        budget (scope, name) had; the change is recorded with `by` and `at`.
        Setting the same values again changes and records nothing (False).
        Grants made earlier in the period still count.
        """
        scope = _budgets.parse_scope(scope)
        name = _budgets.parse_name(name, scope)
        amount = _budgets.parse_amount(amount)
        unit = _budgets.parse_unit(unit)
        period = _budgets.parse_period(period)
        currency = _budgets.parse_currency_for(unit, currency)
        by = _text("by", by, empty=False)
        at = _aware("at", at)
        values = {"amount": amount, "unit": unit, "currency": currency, "period": period}
        with self._write() as connection:
            current = self._budget_row(connection, scope, name)
            if current is not None and all(
                getattr(current, key) == value for key, value in values.items()
            ):
                return False
            # an upsert: a concurrent first set of the same budget is a change, not an error
            statement = self._insert(_budgets_table).values(
                scope=scope, name=name, updated_at=at, updated_by=by, **values
            )
            statement = statement.on_conflict_do_update(
                index_elements=["scope", "name"],
                set_={
                    key: statement.excluded[key] for key in (*values, "updated_at", "updated_by")
                },
            )
            connection.execute(statement)
            self._record_change(connection, at, by, scope, name, _budgets.SET, note="", **values)
        return True

    def grant_budget(
        self,
        *,
        scope: str,
        name: str,
        amount,
        by: str,
        at: datetime,
        note: str = "",
        unit: str | None = None,
        currency: str | None = None,
    ) -> BudgetChange:
        """Add `amount` to a budget for the current period only; the recorded change.

        The grant is in the unit (and currency) of (scope, name)'s budget. A
        user without a budget of their own may still get a grant on top of
        their group's budget: then give its `unit` (and `currency`). Grants
        add up; each is recorded with `by`, `at` and `note`.
        """
        scope = _budgets.parse_scope(scope)
        name = _budgets.parse_name(name, scope)
        amount = _budgets.parse_amount(amount, "grant amount", positive=True)
        by = _text("by", by, empty=False)
        note = _text("note", note, most=_LONG)
        at = _aware("at", at)
        with self._write() as connection:
            current = self._budget_row(connection, scope, name)
            if current is not None:
                other_unit = unit is not None and _budgets.parse_unit(unit) != current.unit
                other_currency = currency is not None and str(currency).strip().upper() != (
                    current.currency or ""
                )
                if other_unit or other_currency:
                    raise ValueError(
                        f"{scope} {name!r} has a budget in "
                        f"{_budgets.unit_label(current.unit, current.currency)}: a grant is in "
                        "the same unit; leave unit and currency out"
                    )
                unit, currency, period = current.unit, current.currency, current.period
            elif scope == _budgets.GROUP:
                raise ValueError(f"group {name!r} has no budget to add to: set one first")
            elif unit is None:
                raise ValueError(
                    f"user {name!r} has no budget of their own: set one first, or give the "
                    "unit (and currency) of the group budget the grant adds to, e.g. "
                    "unit='money', currency='USD'"
                )
            else:
                unit = _budgets.parse_unit(unit)
                currency = _budgets.parse_currency_for(unit, currency)
                period = None
            change_id = self._record_change(
                connection,
                at,
                by,
                scope,
                name,
                _budgets.GRANT,
                amount=amount,
                unit=unit,
                currency=currency,
                period=period,
                note=note,
            )
            row = connection.execute(select(_changes).where(_changes.c.id == change_id)).one()
        return _change_record(row)

    def remove_budget(self, *, scope: str, name: str, by: str, at: datetime) -> bool:
        """Remove the budget of (scope, name); True if there was one.

        Recorded as a change (with the amount removed). Grants made before it
        no longer count, even if a budget is set again in the same period.
        """
        scope = _budgets.parse_scope(scope)
        name = _budgets.parse_name(name, scope)
        by = _text("by", by, empty=False)
        at = _aware("at", at)
        with self._write() as connection:
            current = self._budget_row(connection, scope, name)
            if current is None:
                return False
            connection.execute(delete(_budgets_table).where(_budgets_table.c.id == current.id))
            self._record_change(
                connection,
                at,
                by,
                scope,
                name,
                _budgets.REMOVE,
                amount=current.amount,
                unit=current.unit,
                currency=current.currency,
                period=current.period,
                note="",
            )
        return True

    def budgets(self) -> list[BudgetRecord]:
        """Every budget in force, users' then groups', by name."""
        b = _budgets_table.c
        statement = select(_budgets_table).order_by(case((b.scope == "user", 0), else_=1), b.name)
        with self._read() as connection:
            return [_budget_record(row) for row in connection.execute(statement)]

    def get_budget(self, scope: str, name: str) -> BudgetRecord | None:
        """The budget of a user or group, None if it has none."""
        scope = _budgets.parse_scope(scope)
        with self._read() as connection:
            row = self._budget_row(connection, scope, name, lock=False)
        return _budget_record(row) if row is not None else None

    def budget_changes(
        self, *, scope: str | None = None, name: str | None = None
    ) -> list[BudgetChange]:
        """Recorded budget changes, oldest first; all, or those of a scope and name."""
        conditions = []
        if scope is not None:
            conditions.append(_changes.c.scope == _budgets.parse_scope(scope))
        if name is not None:
            conditions.append(_changes.c.name == name)
        statement = select(_changes).where(*conditions).order_by(_changes.c.at, _changes.c.id)
        with self._read() as connection:
            return [_change_record(row) for row in connection.execute(statement)]

    @staticmethod
    def _budget_row(connection, scope: str, name: str, *, lock: bool = True):
        b = _budgets_table.c
        statement = select(_budgets_table).where(b.scope == scope, b.name == name)
        if lock:  # in a write: PostgreSQL holds the row until the change is recorded
            statement = statement.with_for_update()
        return connection.execute(statement).first()

    @staticmethod
    def _record_change(
        connection,
        at: datetime,
        by: str,
        scope: str,
        name: str,
        change: str,
        *,
        amount: Decimal | None,
        unit: str | None,
        currency: str | None,
        period: str | None,
        note: str,
    ) -> int:
        result = connection.execute(
            _changes.insert()
            .values(
                at=at,
                changed_by=by,
                scope=scope,
                name=name,
                change=change,
                amount=amount,
                unit=unit,
                currency=currency,
                period=period,
                note=note,
            )
            .returning(_changes.c.id)
        )
        return result.scalar_one()
