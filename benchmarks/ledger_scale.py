"""The ledger at scale on SQLite and PostgreSQL: one user's usage, everyone's month, ingest, size.

Fills a ledger (the real schema, made by ``Ledger(url).upgrade()``) with a
year of sessions of --users users (1,000), --sessions sessions (1,000,000)
and --rollups per-minute rollup rows (10,000,000), using bulk inserts
(sqlite3 ``executemany``, PostgreSQL ``COPY``) rather than the ledger's own
writes, and checks the result through the ledger's read API. Then it measures,
on each database:

1. one user's usage: ``Ledger.sessions(user=..., since=<month start>)`` plus
   this month's totals (what a budget check and the CLI report read), and
   ``UsageReader.user_view(user)``, what the user page and ``api/usage`` run
   (all of the user's sessions, totals, 30 days, the rollups of the 25 sessions
   shown); p50 and p95 over --user-samples users picked at random;
2. everyone's month: ``Ledger.usage_sums(since=<month start>)`` plus
   ``usage.usage_by_user`` (the database adds up the closed sessions, Python
   the running ones and those crossing the month's start), against reading
   every session of the month (the same totals, checked);
   ``UsageReader.users_view`` this month and all time, what the admin page
   and ``api/users`` run, and the uncached per-user totals of ``/metrics``;
3. ingest: ``Ledger.add_rollups`` with flushes of 1,000 new rows, the same
   rows rewritten (the meter rewrites the current minute's cumulative rows
   every flush), and flushes of 8 rows (one 8-GPU node);
4. size on disk: SQLite's file and WAL after a checkpoint, PostgreSQL's
   ``pg_total_relation_size`` of the ledger's tables.

Baselines, measured in the same run on the same database: a primary-key
lookup of one session (``SELECT * FROM sessions WHERE id = ?``, through the
ledger's engine) for the user queries; ``SELECT count(*) FROM sessions`` for
the monthly summaries; for ingest, a plain ``INSERT`` of the same rows
(DBAPI ``executemany``, one transaction per batch, values already converted,
no session lookup, no upsert) into the same table, batches alternating with
the ledger's. The query plans (EXPLAIN QUERY PLAN; EXPLAIN ANALYZE on
PostgreSQL) of every statement measured are printed at the end.

The data: "now" is --now (2026-11-27 12:00 UTC), sessions start uniformly
over the year before it; users are unequally active (weights drawn from a
log-normal, sigma 0.75); durations are log-normal (median 50 min, capped at
24 h), 15 % CPU-only, the rest 1, 2, 4 or 8 GPUs of an H100 or A100 node;
prices changed on 2026-06-01; sessions still running at "now" stay open.
The rollups cover whole sessions (every GPU, every minute), newest first,
until --rollups rows are placed: with the defaults that is this month's
sessions (from 1 November), as if older per-minute detail had been pruned; a
year of them would be ~141 million rows. The bulk fill writes rows in key
order, so the size on disk is that of a compact database.

Usage, from the repository root (PostgreSQL: an empty database of its own;
the script refuses one that holds sessions):

    .venv/bin/python benchmarks/ledger_scale.py --db both \\
        --postgresql-url postgresql+psycopg://jgm:jgm@127.0.0.1:5432/jgm_bench \\
        [--sessions 1000000 --rollups 10000000 --users 1000] [--keep] [--reuse]

A quick run: ``--sessions 20000 --rollups 200000``. The SQLite file goes to a
temporary folder unless --sqlite-path is given; --keep keeps it (and the
PostgreSQL tables), --reuse measures a database kept by an earlier run with
the same arguments instead of filling a new one.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from array import array
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import psycopg  # noqa: E402
from sqlalchemy import event, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from jupyter_gpu_meter import usage  # noqa: E402
from jupyter_gpu_meter.ledger import Ledger, RollupRow  # noqa: E402
from jupyter_gpu_meter.pricing import Pricing, session_sums  # noqa: E402
from jupyter_gpu_meter.service.reader import UsageReader  # noqa: E402
from jupyter_gpu_meter.usage import usage_by_user  # noqa: E402

UTC = timezone.utc
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
#: prices before and after the price change of 2026-06-01
PRICE_CHANGE = datetime(2026, 6, 1, tzinfo=UTC)
PRICINGS = (
    Pricing(prices={H100: "2.99", A100: "1.49"}, cpu_price="0.05", billing_increment=60),
    Pricing(
        prices={H100: "2.49", A100: "1.29"},
        cpu_price="0.05",
        billing_increment=60,
        minimum_charge="0.10",
    ),
)
#: (profile, GPUs, weight)
PROFILES = (("cpu", 0, 15), ("gpu-1", 1, 50), ("gpu-2", 2, 20), ("gpu-4", 4, 10), ("gpu-8", 8, 5))
SERVERS = (("", 85), ("train", 10), ("exp", 5))
END_REASONS = (("stopped", 80), ("gpu-idle", 12), ("max-age", 5), ("budget", 3))
#: GPU nodes of 8 GPUs each; the first H100_NODES have H100s, the rest A100s
NODES, H100_NODES, GPUS_PER_NODE = 32, 20, 8
SESSION_COLUMNS = (
    "id",
    "container_id",
    "username",
    "server",
    "gpu_uuids",
    "gpu_count",
    "gpu_model",
    "profile",
    "price_per_gpu_hour",
    "cpu_price_per_hour",
    "currency",
    "billing_increment_s",
    "minimum_charge",
    "started_at",
    "ended_at",
    "end_reason",
    "last_seen_at",
    "gpu_microseconds",
    "charge_units",
)
ROLLUP_COLUMNS = (
    "session_id",
    "gpu_uuid",
    "minute",
    "writer",
    "samples",
    "util_mean",
    "util_max",
    "memory_max_bytes",
    "busy_ms",
    "busy_source",
)


def _insert_sql(table: str, columns: tuple[str, ...], mark: str) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"


SQLITE_SESSIONS_INSERT = _insert_sql("sessions", SESSION_COLUMNS, "?")
SQLITE_ROLLUPS_INSERT = _insert_sql("rollups", ROLLUP_COLUMNS, "?")
POSTGRESQL_ROLLUPS_INSERT = _insert_sql("rollups", ROLLUP_COLUMNS, "%s")
_US = timedelta(microseconds=1)
_MINUTE = timedelta(minutes=1)
#: writers of the rows this script adds while measuring ingest (deleted afterwards)
BENCH_WRITER = "bench-"


# --- the data -----------------------------------------------------------------------------


def _weighted(rng: random.Random, choices, k: int) -> list[int]:
    return rng.choices(range(len(choices)), weights=[c[-1] for c in choices], k=k)


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class Plan:
    """A ledger's content, compact: one entry per session in each array, index = id - 1."""

    now: datetime
    users: list[str]
    start_us: array  # microseconds since the epoch
    duration_us: array
    user: array
    profile: array
    node: array
    first_gpu: array
    server: array
    reason: array
    gpu_uuids: list[list[str]]  # per node, sorted
    writers: list[str]  # per node
    #: the first session (index) with rollups, and how many rows the first of them gets
    rollups_from: int = 0
    rollups_first_rows: int = 0
    rollups: int = 0
    snapshots: dict = field(default_factory=dict)
    seed: int = 42

    @property
    def sessions(self) -> int:
        return len(self.start_us)

    def started(self, i: int) -> datetime:
        return datetime.fromtimestamp(0, UTC) + self.start_us[i] * _US

    def ended(self, i: int) -> datetime | None:
        end_us = self.start_us[i] + self.duration_us[i]
        if end_us > self.now_us:
            return None
        return datetime.fromtimestamp(0, UTC) + end_us * _US

    @property
    def now_us(self) -> int:
        return (self.now - datetime.fromtimestamp(0, UTC)) // _US

    def gpus(self, i: int) -> int:
        return PROFILES[self.profile[i]][1]

    def uuids(self, i: int) -> list[str]:
        first = self.first_gpu[i]
        return self.gpu_uuids[self.node[i]][first : first + self.gpus(i)]

    def model(self, i: int) -> str:
        if not self.gpus(i):
            return ""
        return H100 if self.node[i] < H100_NODES else A100

    def container_id(self, i: int) -> str:
        return hashlib.sha256(f"{self.seed}:{i}".encode()).hexdigest()

    def snapshot(self, i: int):
        period = int(self.start_us[i] >= (PRICE_CHANGE - datetime.fromtimestamp(0, UTC)) // _US)
        key = (period, self.model(i), self.gpus(i))
        if key not in self.snapshots:
            self.snapshots[key] = PRICINGS[period].snapshot(key[1], key[2])
        return self.snapshots[key]

    def session_row(self, i: int) -> tuple:
        """Session `i` as the ledger stores it: Python values, aware UTC datetimes."""
        started, ended = self.started(i), self.ended(i)
        price = self.snapshot(i)
        if ended is None:
            last_seen = max(started, self.now - timedelta(seconds=2))
            sums = (None, None)
        else:
            last_seen = ended
            sums = session_sums(price, started, ended)
        return (
            i + 1,
            self.container_id(i),
            self.users[self.user[i]],
            SERVERS[self.server[i]][0],
            ",".join(self.uuids(i)),
            self.gpus(i),
            self.model(i),
            PROFILES[self.profile[i]][0],
            price.price_per_gpu_hour,
            price.cpu_price_per_hour,
            price.currency,
            price.billing_increment_s,
            price.minimum_charge,
            started,
            ended,
            None if ended is None else END_REASONS[self.reason[i]][0],
            last_seen,
            *sums,
        )

    def minutes(self, i: int) -> tuple[int, int]:
        """(first minute, number of minutes) session `i` ran in, minutes since the epoch."""
        start = self.start_us[i] // 60_000_000
        end_us = min(self.start_us[i] + self.duration_us[i], self.now_us)
        return start, end_us // 60_000_000 - start + 1

    def rollup_rows(self, minute_value):
        """Every rollup row in key order: (session_id, gpu_uuid, minute, writer, ...).

        `minute_value(minutes since the epoch)` gives the stored minute.
        """
        for i in range(self.rollups_from, self.sessions):
            if not self.gpus(i):
                continue
            first, count = self.minutes(i)
            budget = self.rollups_first_rows if i == self.rollups_from else None
            writer = self.writers[self.node[i]]
            for g, uuid in enumerate(sorted(self.uuids(i))):
                for m in range(count):
                    if budget is not None:
                        if budget == 0:
                            break
                        budget -= 1
                    util = float((i * 37 + g * 17 + m * 11) % 100)
                    yield (
                        i + 1,
                        uuid,
                        minute_value(first + m),
                        writer,
                        60,
                        util,
                        min(100, int(util) + 9),
                        20_000_000_000 + (m % 50) * 1_000_000_000,
                        int(util) * 600,  # util% of 60 s, in ms
                        "utilization",
                    )


def make_plan(*, users: int, sessions: int, rollups: int, now: datetime, seed: int) -> Plan:
    rng = random.Random(seed)
    year_us = timedelta(days=365) // _US
    now_us = (now - datetime.fromtimestamp(0, UTC)) // _US
    start_us = array("q", sorted(now_us - int(rng.random() * year_us) for _ in range(sessions)))
    median_us = 50 * 60 * 1_000_000
    duration_us = array(
        "q",
        (
            max(60_000_000, min(int(median_us * math.exp(rng.gauss(0, 1.0))), 86_400_000_000))
            for _ in range(sessions)
        ),
    )
    weights = [math.exp(rng.gauss(0, 0.75)) for _ in range(users)]
    profile = array("B", _weighted(rng, PROFILES, sessions))
    node = array("B", (rng.randrange(NODES) for _ in range(sessions)))
    first_gpu = array("B", (rng.randrange(GPUS_PER_NODE - PROFILES[p][1] + 1) for p in profile))
    plan = Plan(
        now=now,
        users=[f"user-{u:04d}" for u in range(users)],
        start_us=start_us,
        duration_us=duration_us,
        user=array("H", rng.choices(range(users), weights=weights, k=sessions)),
        profile=profile,
        node=node,
        first_gpu=first_gpu,
        server=array("B", _weighted(rng, SERVERS, sessions)),
        reason=array("B", _weighted(rng, END_REASONS, sessions)),
        gpu_uuids=[sorted(_uuid(rng) for _ in range(GPUS_PER_NODE)) for _ in range(NODES)],
        # like the meter's writer id: "<hostname>-<pid>-<6 hex digits>"
        writers=[
            f"gpu-node-{n:02d}-{1000 + n * 37}-{rng.getrandbits(24):06x}" for n in range(NODES)
        ],
        seed=seed,
    )
    # rollups: whole sessions, newest first, until the count is reached
    placed, i = 0, sessions
    while i > 0 and placed < rollups:
        i -= 1
        rows = plan.gpus(i) * plan.minutes(i)[1]
        if placed + rows >= rollups:
            plan.rollups_first_rows = rollups - placed
            placed = rollups
            break
        placed += rows
        plan.rollups_first_rows = rows
    plan.rollups_from, plan.rollups = i, placed
    return plan


# --- machine ----------------------------------------------------------------------------


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def disk_of(path: Path) -> str:
    """The block device and filesystem `path` is on, as the kernel reports them."""
    st = os.stat(path)
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    sysfs = Path(f"/sys/dev/block/{device}")
    name, rotational, size = device, "?", ""
    if sysfs.exists():
        real = sysfs.resolve()
        disk = real if (real / "queue").exists() else real.parent
        name = disk.name
        rotational = (disk / "queue" / "rotational").read_text().strip()
        size = f", {int((disk / 'size').read_text()) * 512 / 1024**3:.0f} GiB"
    fs = "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[1] == "/":
            fs = parts[2]
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and str(path.resolve()).startswith(parts[1].rstrip("/") + "/"):
            fs = parts[2]
    return f"{name} ({fs}{size}, rotational={rotational} as the kernel reports it)"


def machine(folder: Path) -> list[str]:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"CPU: {os.cpu_count()} cores (nproc), {cpu_model()}",
        f"RAM: {memory_gib():.1f} GiB",
        f"disk: {disk_of(folder)}",
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"psycopg {psycopg.__version__}",
        f"load average at start: {load}",
    ]


# --- timing helpers -------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def timed(function, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


@contextmanager
def captured(engine):
    """The (statement, parameters) the engine sends while the block runs."""
    statements: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):  # not SQLite's BEGIN
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def swap(parameters, old, new):
    """`parameters` (a tuple or a dict, as the driver gets them) with `old` values made `new`."""
    if isinstance(parameters, dict):
        return {key: new if value == old else value for key, value in parameters.items()}
    return tuple(new if value == old else value for value in parameters)


def raw_fetch(ledger: Ledger, statement: str, parameters) -> float:
    """Seconds to run `statement` and fetch every row with the bare DBAPI connection."""
    connection = ledger.engine.raw_connection()
    try:
        cursor = connection.cursor()
        started = time.perf_counter()
        cursor.execute(statement, parameters)
        cursor.fetchall()
        elapsed = time.perf_counter() - started
        cursor.close()
        connection.rollback()
        return elapsed
    finally:
        connection.close()


# --- the databases ------------------------------------------------------------------------


def _sqlite_time(value: datetime | None) -> str | None:
    # what UTCDateTime and SQLAlchemy's SQLite DATETIME store: naive UTC, microseconds
    return None if value is None else f"{value:%Y-%m-%d %H:%M:%S.%f}"


def _sqlite_session(row: tuple) -> tuple:
    row = list(row)
    for index in (8, 9, 12):  # Money: fixed-point text
        row[index] = str(row[index].quantize(Decimal("0.000001")))
    for index in (13, 14, 16):
        row[index] = _sqlite_time(row[index])
    return tuple(row)


def _minute_cache(convert):
    epoch = datetime.fromtimestamp(0, UTC)
    cache: dict[int, object] = {}

    def value(minute: int):
        if minute not in cache:
            cache[minute] = convert(epoch + minute * _MINUTE)
        return cache[minute]

    return value


def _chunks(rows, size: int):
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Database:
    """One database under test: how to fill it, measure its size, explain a query."""

    name = ""

    def __init__(self, url: str):
        self.url = url

    def ledger(self) -> Ledger:
        return Ledger(self.url)

    def counts(self) -> tuple[int, int]:
        with self.ledger() as ledger, ledger.engine.connect() as connection:
            return (
                connection.execute(text("SELECT count(*) FROM sessions")).scalar_one(),
                connection.execute(text("SELECT count(*) FROM rollups")).scalar_one(),
            )


class SQLiteDatabase(Database):
    name = "SQLite"

    def __init__(self, path: Path):
        super().__init__(f"sqlite:///{path}")
        self.path = path

    def describe(self) -> str:
        return f"SQLite {sqlite3.sqlite_version}, WAL, synchronous=FULL (the ledger's settings)"

    def fill(self, plan: Plan, log) -> None:
        with self.ledger() as ledger:
            ledger.upgrade()
        connection = sqlite3.connect(self.path, isolation_level=None)
        # the fastest safe-enough way in: no journal, no fsync; WAL again afterwards
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA cache_size=-1000000")
        insert = SQLITE_SESSIONS_INSERT
        rows = (_sqlite_session(plan.session_row(i)) for i in range(plan.sessions))
        for chunk in _chunks(rows, 50_000):
            connection.execute("BEGIN")
            connection.executemany(insert, chunk)
            connection.execute("COMMIT")
        log(f"  {plan.sessions:,} sessions in")
        insert = SQLITE_ROLLUPS_INSERT
        done = 0
        for chunk in _chunks(plan.rollup_rows(_minute_cache(_sqlite_time)), 200_000):
            connection.execute("BEGIN")
            connection.executemany(insert, chunk)
            connection.execute("COMMIT")
            done += len(chunk)
            if done % 2_000_000 < 200_000:
                log(f"  {done:,} rollup rows in")
        for statement in ROLLUP_SUMS:
            connection.execute(statement)
        log("  closed sessions' rollup sums in")
        connection.execute("PRAGMA journal_mode=WAL")
        connection.close()

    def size(self) -> dict:
        connection = sqlite3.connect(self.path, isolation_level=None)
        try:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            page = connection.execute("PRAGMA page_size").fetchone()[0]
            free = connection.execute("PRAGMA freelist_count").fetchone()[0] * page
            owners = dict(
                connection.execute(
                    "SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')"
                )
            )
            per_table: dict[str, int] = {}
            for name, size in connection.execute(
                "SELECT name, sum(pgsize) FROM dbstat GROUP BY name"
            ):
                table = owners.get(name, name)
                per_table[table] = per_table.get(table, 0) + size
        finally:
            connection.close()
        wal = Path(f"{self.path}-wal")
        total = self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        return {"total": total - free, "free": free, "tables": per_table}

    def explain(self, statement: str, parameters) -> list[str]:
        connection = sqlite3.connect(self.path)
        try:
            rows = connection.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
        finally:
            connection.close()
        return [f"{row[3]}" for row in rows]

    def raw_insert_sql(self) -> str:
        return SQLITE_ROLLUPS_INSERT

    def raw_minute(self, minute: datetime):
        return _sqlite_time(minute)

    def raw_insert(self, dbapi, rows: list[tuple]) -> None:
        cursor = dbapi.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        cursor.executemany(self.raw_insert_sql(), rows)
        cursor.execute("COMMIT")
        cursor.close()

    def cleanup_bench_rows(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None)
        connection.execute("DELETE FROM rollups WHERE writer LIKE ?", (BENCH_WRITER + "%",))
        connection.close()

    def drop(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


class PostgreSQLDatabase(Database):
    name = "PostgreSQL"

    def __init__(self, url: str):
        super().__init__(url)
        self.conninfo = (
            make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        )

    def connect(self, **kwargs):
        return psycopg.connect(self.conninfo, **kwargs)

    def describe(self) -> str:
        with self.connect() as connection:
            version = connection.execute("SHOW server_version").fetchone()[0]
            settings = [
                f"{name}={connection.execute(f'SHOW {name}').fetchone()[0]}"
                for name in (
                    "shared_buffers",
                    "work_mem",
                    "max_parallel_workers_per_gather",
                    "synchronous_commit",
                    "jit",
                )
            ]
        return f"PostgreSQL {version} (same machine, TCP to 127.0.0.1), " + ", ".join(settings)

    def fill(self, plan: Plan, log) -> None:
        with self.ledger() as ledger:
            ledger.upgrade()
        with self.connect() as connection:
            # the rollups' key and foreign key are built once at the end, not row by row
            connection.execute("ALTER TABLE rollups DROP CONSTRAINT fk_rollups_session_id_sessions")
            connection.execute("ALTER TABLE rollups DROP CONSTRAINT pk_rollups")
            with connection.cursor() as cursor:
                with cursor.copy(
                    f"COPY sessions ({', '.join(SESSION_COLUMNS)}) FROM STDIN"
                ) as copy:
                    for i in range(plan.sessions):
                        copy.write_row(plan.session_row(i))
            connection.execute(
                "SELECT setval(pg_get_serial_sequence('sessions', 'id'), "
                "(SELECT max(id) FROM sessions))"
            )
            connection.commit()
            log(f"  {plan.sessions:,} sessions in")
            done = 0
            for chunk in _chunks(plan.rollup_rows(_minute_cache(lambda m: m)), 1_000_000):
                with connection.cursor() as cursor:
                    with cursor.copy(
                        f"COPY rollups ({', '.join(ROLLUP_COLUMNS)}) FROM STDIN"
                    ) as copy:
                        for row in chunk:
                            copy.write_row(row)
                connection.commit()
                done += len(chunk)
                if done % 2_000_000 < 1_000_000:
                    log(f"  {done:,} rollup rows in")
            connection.execute("SET maintenance_work_mem = '512MB'")
            connection.execute(
                "ALTER TABLE rollups ADD CONSTRAINT pk_rollups "
                "PRIMARY KEY (session_id, gpu_uuid, minute, writer)"
            )
            connection.execute(
                "ALTER TABLE rollups ADD CONSTRAINT fk_rollups_session_id_sessions "
                "FOREIGN KEY (session_id) REFERENCES sessions (id) ON DELETE CASCADE"
            )
            connection.commit()
            log("  key and foreign key of rollups built")
            for statement in ROLLUP_SUMS:
                connection.execute(statement)
            connection.commit()
            log("  closed sessions' rollup sums in")
        with self.connect(autocommit=True) as connection:
            # what autovacuum does to tables this size in steady state
            connection.execute("VACUUM (ANALYZE) sessions")
            connection.execute("VACUUM (ANALYZE) rollups")

    def size(self) -> dict:
        tables = ("sessions", "rollups", "meter_state", "decisions", "budgets", "budget_changes")
        with self.connect() as connection:
            per_table = {
                table: connection.execute(
                    "SELECT pg_total_relation_size(%s::regclass)", (table,)
                ).fetchone()[0]
                for table in tables
            }
        return {"total": sum(per_table.values()), "free": 0, "tables": per_table}

    def explain(self, statement: str, parameters) -> list[str]:
        with self.connect() as connection:
            rows = connection.execute(
                "EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters
            ).fetchall()
        return [row[0] for row in rows]

    def raw_insert_sql(self) -> str:
        return POSTGRESQL_ROLLUPS_INSERT

    def raw_minute(self, minute: datetime):
        return minute

    def raw_insert(self, dbapi, rows: list[tuple]) -> None:
        cursor = dbapi.cursor()
        cursor.executemany(self.raw_insert_sql(), rows)
        dbapi.commit()
        cursor.close()

    def cleanup_bench_rows(self) -> None:
        with self.connect() as connection:
            connection.execute("DELETE FROM rollups WHERE writer LIKE %s", (BENCH_WRITER + "%",))
        with self.connect(autocommit=True) as connection:
            connection.execute("VACUUM (ANALYZE) rollups")

    def drop(self) -> None:
        with self.connect() as connection:
            for table in (
                "rollups",
                "process_usage",
                "storage_periods",
                "budget_changes",
                "budgets",
                "decisions",
                "meter_state",
            ):
                connection.execute(f"DROP TABLE IF EXISTS {table}")
            connection.execute("DROP TABLE IF EXISTS sessions")
            connection.execute("DROP TABLE IF EXISTS alembic_version")


#: what the ledger stores with a closed session (its rollups added up, see migration
#: 0006), added after the bulk fill in two statements; the fill has busy time, no energy
ROLLUP_SUMS = (
    "UPDATE sessions SET rollup_samples = s.samples, busy_ms = s.busy, energy_units = 0, "
    "rollups_from = s.first, rollups_until = s.last FROM (SELECT session_id, "
    "sum(samples) AS samples, sum(busy_ms) AS busy, min(minute) AS first, "
    "max(minute) AS last FROM rollups GROUP BY session_id) AS s "
    "WHERE sessions.id = s.session_id AND sessions.ended_at IS NOT NULL",
    "UPDATE sessions SET rollup_samples = 0, busy_ms = 0, energy_units = 0 "
    "WHERE ended_at IS NOT NULL AND rollup_samples IS NULL",
)


# --- checks ---------------------------------------------------------------------------------


def check_fill_format(plan: Plan, folder: Path) -> None:
    """The SQLite bulk fill stores exactly what the ledger's own writes store."""
    i = next(i for i in range(plan.rollups_from, plan.sessions) if plan.gpus(i) and plan.ended(i))
    row = plan.session_row(i)
    by_ledger = SQLiteDatabase(folder / "format-ledger.sqlite")
    by_fill = SQLiteDatabase(folder / "format-fill.sqlite")
    with by_ledger.ledger() as ledger:
        ledger.upgrade()
        ledger.open_session(
            container_id=row[1],
            user=row[2],
            server=row[3],
            gpu_uuids=row[4].split(","),
            gpu_model=row[6],
            profile=row[7],
            price=plan.snapshot(i),
            started_at=row[13],
        )
        ledger.touch_sessions([row[1]], row[16])  # the meter's "seen running" before the end
        ledger.close_session(row[1], ended_at=row[14], reason=row[15])
        ledger.add_rollups(
            [
                RollupRow(row[1], uuid, row[13] + m * _MINUTE, "w", 60, 12.5, 20, 3, 7500)
                for uuid in row[4].split(",")
                for m in range(3)
            ]
        )
    with by_fill.ledger() as ledger:
        ledger.upgrade()
    connection = sqlite3.connect(by_fill.path, isolation_level=None)
    connection.execute(
        SQLITE_SESSIONS_INSERT,
        (1, *_sqlite_session(row)[1:]),
    )
    minute = _minute_cache(_sqlite_time)
    first = plan.minutes(i)[0]
    connection.executemany(
        SQLITE_ROLLUPS_INSERT,
        [
            (1, uuid, minute(first + m), "w", 60, 12.5, 20, 3, 7500, "utilization")
            for uuid in row[4].split(",")
            for m in range(3)
        ],
    )
    for statement in ROLLUP_SUMS:
        connection.execute(statement)
    connection.close()
    stored = []
    for database in (by_ledger, by_fill):
        connection = sqlite3.connect(database.path)
        stored.append(
            (
                connection.execute("SELECT * FROM sessions").fetchall(),
                connection.execute("SELECT * FROM rollups ORDER BY 2, 3").fetchall(),
            )
        )
        connection.close()
        database.drop()
    if stored[0] != stored[1]:
        raise SystemExit(f"bulk fill format differs from the ledger's:\n{stored[0]}\n{stored[1]}")


def check_read_back(ledger: Ledger, plan: Plan, rng: random.Random) -> None:
    """Sessions and rollups read through the ledger are the plan's."""
    picks = rng.sample(range(plan.sessions), 20) + [plan.sessions - 1, plan.rollups_from + 1]
    for i in picks:
        row = plan.session_row(i)
        record = ledger.get_session(row[1])
        expected = (
            row[0],
            row[2],
            row[13],
            row[14],
            plan.snapshot(i),
            tuple(row[4].split(",") if row[4] else ()),
        )
        got = (
            record.id,
            record.user,
            record.started_at,
            record.ended_at,
            record.price,
            record.gpu_uuids,
        )
        if got != expected:
            raise SystemExit(f"session {i + 1} reads back as {got}, not {expected}")
    i = plan.sessions - 1
    while not plan.gpus(i):
        i -= 1
    rollups = ledger.rollups(plan.container_id(i))
    if len(rollups) != plan.gpus(i) * plan.minutes(i)[1]:
        raise SystemExit(
            f"session {i + 1}: {len(rollups)} rollups, expected {plan.gpus(i) * plan.minutes(i)[1]}"
        )


# --- measurements ---------------------------------------------------------------------------


@dataclass
class Results:
    name: str
    describe: str = ""
    fill_s: float = 0.0
    size: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    plans: list = field(default_factory=list)


def measure_queries(db: Database, plan: Plan, args, results: Results, log) -> None:
    now = plan.now
    month = usage.month_start(now)
    rng = random.Random(plan.seed + 1)
    ledger = db.ledger()
    reader = UsageReader(ledger, currency="USD", clock=lambda: now)
    f = results.figures
    try:
        # baselines
        ids = [rng.randrange(1, plan.sessions + 1) for _ in range(args.user_samples)]
        lookup = text("SELECT * FROM sessions WHERE id = :id")
        with ledger.engine.connect() as connection:
            for i in ids[:20]:  # warm-up
                connection.execute(lookup, {"id": i}).all()

        def lookup_one(i):
            with ledger.engine.connect() as connection:  # checked out per call, as the ledger does
                return connection.execute(lookup, {"id": i}).all()

        pk = [timed(lookup_one, i)[0] for i in ids]
        f["pk"] = pk
        counts = []
        for _ in range(args.admin_rounds):
            with ledger.engine.connect() as connection:
                counts.append(
                    timed(
                        lambda: connection.execute(text("SELECT count(*) FROM sessions")).scalar()
                    )[0]
                )
        f["count"] = counts
        log(f"  baselines: PK lookup p95 {ms(percentile(pk, 95))}, count(*) {ms(min(counts))}")

        # 1. one user's usage
        users = [plan.users[u] for u in sorted({*plan.user})]
        sample = [rng.choice(users) for _ in range(args.user_samples)]
        with captured(ledger.engine) as statements:
            ledger.sessions(user=sample[0], since=month)
        user_month_sql = statements[0]
        with captured(ledger.engine) as statements:
            reader.user_view(sample[0])
        user_view_sql = statements
        for user in sample[:10]:  # warm-up
            ledger.sessions(user=user, since=month)
        month_query, view, month_db, counts_month, counts_all = [], [], [], [], []
        for user in sample:
            elapsed, sessions = timed(ledger.sessions, user=user, since=month)
            elapsed += timed(usage.totals, sessions, now=now, since=month)[0]
            month_query.append(elapsed)
            counts_month.append(len(sessions))
            month_db.append(
                raw_fetch(ledger, user_month_sql[0], swap(user_month_sql[1], sample[0], user))
            )
            elapsed, result = timed(reader.user_view, user)
            view.append(elapsed)
            counts_all.append(result.all_time.sessions)
        f["user_month"], f["user_month_db"], f["user_view"] = month_query, month_db, view
        f["user_sessions_month"] = statistics.median(counts_month)
        f["user_sessions_all"] = (statistics.median(counts_all), max(counts_all))
        log(
            f"  user: month p95 {percentile(month_query, 95) * 1e3:.1f} ms, "
            f"user_view p95 {percentile(view, 95) * 1e3:.1f} ms"
        )

        # 2. everyone's month
        with captured(ledger.engine) as statements:
            ledger.usage_sums(since=month)
        sums_sql = statements
        with captured(ledger.engine) as statements:
            ledger.last_active(now)
        active_sql = statements[0]
        with captured(ledger.engine) as statements:
            ledger.sessions(since=month)
        every_month_sql = statements[0]
        summary, summary_db, every = [], [], []
        for _ in range(args.admin_rounds):
            db_s = sum(raw_fetch(ledger, *statement) for statement in sums_sql)
            load_s, (sums, others) = timed(ledger.usage_sums, since=month)
            agg_s, rows = timed(usage_by_user, others, now=now, since=month, sums=sums)
            summary.append(load_s + agg_s)
            summary_db.append(db_s)
            # baseline: every session of the month read and added up one by one
            load_s, sessions = timed(ledger.sessions, since=month)
            agg_s, expected = timed(usage_by_user, sessions, now=now, since=month)
            every.append(load_s + agg_s)
            if rows != expected:
                raise SystemExit("usage_sums: the month's totals differ from every session's")
            f["admin_month_sessions"] = len(sessions)
            f["admin_month_users"] = len({r.user for r in rows})
            f["admin_month_read"] = len(others)
            del sessions, sums, others, rows, expected
        f["summary"], f["summary_db"], f["summary_every"] = summary, summary_db, every
        log(
            f"  everyone's month: usage_sums {ms(statistics.median(summary))}, "
            f"every session {ms(statistics.median(every))}"
        )
        page, page_all, page_active, metrics = [], [], [], []
        reader.settings.metrics_cache_seconds = 0  # every call reads the ledger
        for _ in range(args.page_rounds):
            page.append(timed(reader.users_view, since=month)[0])
            page_all.append(timed(reader.users_view)[0])
            page_active.append(timed(ledger.last_active, now)[0])
            metrics.append(timed(reader.metrics_totals)[0])
        f["users_view"], f["users_view_all"] = page, page_all
        f["users_view_active"], f["metrics_totals"] = page_active, metrics
        log(
            f"  admin page: this month {ms(statistics.median(page))}, "
            f"all time {ms(statistics.median(page_all))}"
        )

        # the plans of what was measured
        for title, (statement, parameters) in [
            ("PK lookup (baseline)", (str(lookup.compile(ledger.engine)), None)),
            ("one user's sessions this month: Ledger.sessions(user=, since=)", user_month_sql),
            *[
                (f"user_view, statement {n + 1} of {len(user_view_sql)}", s)
                for n, s in enumerate(user_view_sql[:2])
            ],
            *[
                (f"Ledger.usage_sums(since=<month>), statement {n + 1}", statement)
                for n, statement in enumerate(sums_sql)
            ],
            ("Ledger.last_active()", active_sql),
            ("baseline: every session this month, Ledger.sessions(since=)", every_month_sql),
        ]:
            if parameters is None:
                parameters = {"id": 1} if db.name == "PostgreSQL" else (1,)
                statement = statement.replace(":id", "%(id)s" if db.name == "PostgreSQL" else "?")
            results.plans.append((title, statement, db.explain(statement, parameters)))
    finally:
        reader.close()
        ledger.close()


def ingest_rows(plan: Plan, count: int, writer: str, minute_offset: int) -> list[tuple]:
    """`count` rows as the meter writes them: the running sessions' GPUs, minute by minute
    after "now" (+ `minute_offset`): (container_id, session_id, gpu_uuid, minute)."""
    slots = [
        (plan.container_id(i), i + 1, uuid)
        for i in range(plan.sessions)
        if plan.gpus(i) and plan.ended(i) is None
        for uuid in plan.uuids(i)
    ]
    if len(slots) < 8:  # a small plan may have no running GPU session: use the newest
        newest = [i for i in range(plan.sessions - 1, -1, -1) if plan.gpus(i)][:50]
        slots = [(plan.container_id(i), i + 1, uuid) for i in newest for uuid in plan.uuids(i)]
    base = plan.now.replace(second=0, microsecond=0) + (1 + minute_offset) * _MINUTE
    rows = []
    for n in range(count):
        container_id, session_id, uuid = slots[n % len(slots)]
        rows.append((container_id, session_id, uuid, base + (n // len(slots)) * _MINUTE, writer))
    return rows


def measure_ingest(db: Database, plan: Plan, args, results: Results, log) -> None:
    f = results.figures
    ledger = db.ledger()
    dbapi = ledger.engine.raw_connection()
    pid = os.getpid()
    try:
        batches = args.ingest_batches
        size = args.batch_rows
        all_ledger = ingest_rows(plan, batches * size, f"{BENCH_WRITER}ledger-{pid}", 0)
        all_raw = ingest_rows(plan, batches * size, f"{BENCH_WRITER}raw-{pid}", 0)

        def as_rollup(row, n, samples=60):
            container_id, _, uuid, minute, writer = row
            return RollupRow(
                container_id, uuid, minute, writer, samples, float(n % 100), 90, 1 << 34, n % 100
            )

        def as_raw(row, n):
            _, session_id, uuid, minute, writer = row
            return (
                session_id,
                uuid,
                db.raw_minute(minute),
                writer,
                60,
                float(n % 100),
                90,
                1 << 34,
                n % 100,
                "utilization",
            )

        ledger_batches = [
            [as_rollup(r, n) for n, r in enumerate(all_ledger[b * size : (b + 1) * size])]
            for b in range(batches)
        ]
        raw_batches = [
            [as_raw(r, n) for n, r in enumerate(all_raw[b * size : (b + 1) * size])]
            for b in range(batches)
        ]
        # warm-up: one batch each, to a minute of its own
        warm = ingest_rows(plan, size, f"{BENCH_WRITER}warm-{pid}", 100_000)
        ledger.add_rollups([as_rollup(r, n) for n, r in enumerate(warm)])
        db.raw_insert(
            dbapi,
            [
                as_raw(r, n)
                for n, r in enumerate(
                    ingest_rows(plan, size, f"{BENCH_WRITER}warmraw-{pid}", 100_000)
                )
            ],
        )
        ledger_s, raw_s = [], []
        for b in range(batches):
            elapsed, unplaced = timed(ledger.add_rollups, ledger_batches[b])
            assert not unplaced, unplaced[:3]
            ledger_s.append(elapsed)
            raw_s.append(timed(db.raw_insert, dbapi, raw_batches[b])[0])
        f["ingest_ledger"], f["ingest_raw"] = ledger_s, raw_s
        # the same rows again, cumulative values grown: the upsert's update path
        rewrite_s = []
        for b in range(batches):
            batch = [
                RollupRow(
                    r.container_id,
                    r.gpu_uuid,
                    r.minute,
                    r.writer,
                    120,
                    r.util_mean,
                    95,
                    r.memory_max_bytes,
                )
                for r in ledger_batches[b]
            ]
            rewrite_s.append(timed(ledger.add_rollups, batch)[0])
        f["ingest_rewrite"] = rewrite_s
        # small flushes: one 8-GPU node's rows
        small = ingest_rows(plan, 8 * args.small_batches, f"{BENCH_WRITER}small-{pid}", 200_000)
        small_s = []
        for b in range(args.small_batches):
            batch = [as_rollup(r, n) for n, r in enumerate(small[b * 8 : (b + 1) * 8])]
            small_s.append(timed(ledger.add_rollups, batch)[0])
        f["ingest_small"] = small_s
        log(
            f"  ingest: add_rollups {size * batches / sum(ledger_s):,.0f} rows/s, "
            f"raw INSERT {size * batches / sum(raw_s):,.0f} rows/s"
        )
    finally:
        dbapi.close()
        ledger.close()
        db.cleanup_bench_rows()


# --- the report -------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 0.01:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds * 1e3:.2f} ms"


def mib(size: float) -> str:
    return f"{size / 1024**2:,.0f} MiB"


def report(all_results: list[Results], plan: Plan, args, header: list[str]) -> str:
    running = sum(1 for i in range(plan.sessions) if plan.ended(i) is None)
    lines = [f"- {line}" for line in header]
    lines.append(
        f"- data: {len(plan.users):,} users, {plan.sessions:,} sessions over the year to "
        f"{plan.now:%Y-%m-%d %H:%M} UTC ({running} running), {plan.rollups:,} rollup rows "
        f"(sessions {plan.rollups_from + 1:,} to {plan.sessions:,})"
    )
    for r in all_results:
        lines.append(f"- {r.name}: {r.describe}; bulk fill {r.fill_s:.0f} s")
    names = [r.name for r in all_results]
    lines += [
        "",
        "| figure | goal | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]

    def row(label: str, goal: str, cell) -> None:
        cells = []
        for r in all_results:
            try:
                cells.append(cell(r.figures, r))
            except (KeyError, ZeroDivisionError, ValueError):
                cells.append("–")
        lines.append(f"| {label} | {goal} | " + " | ".join(cells) + " |")

    med = statistics.median

    def p50_p95(key: str, bold: bool = False):
        def cell(f, r):
            p95 = ms(percentile(f[key], 95))
            return f"{ms(percentile(f[key], 50))} / " + (f"**{p95}**" if bold else p95)

        return cell

    def ratio(key: str, base: str, q=None):
        if q is None:
            return lambda f, r: f"{med(f[key]) / med(f[base]):,.0f}×"
        return lambda f, r: f"{percentile(f[key], q) / percentile(f[base], q):,.0f}×"

    def rate(key: str, rows: int, bold: bool = False):
        def cell(f, r):
            value = f"{rows * len(f[key]) / sum(f[key]):,.0f}"
            return (f"**{value}**" if bold else value) + f" ({ms(med(f[key]))} per flush)"

        return cell

    def median_of(*keys: str, bold: bool = False):
        def cell(f, r):
            text = " / ".join(ms(med(f[key])) for key in keys)
            return f"**{text}**" if bold else text

        return cell

    def sessions_per_user(f, r):
        median_all, most = f["user_sessions_all"]
        return f"{f['user_sessions_month']:.0f} / {median_all:.0f}, {most:,}"

    row("baseline: PK lookup of one session, p50 / p95", "", p50_p95("pk"))
    row(
        "one user's usage this month: `sessions(user=, since=)` + totals, p50 / p95",
        "p95 ≤ 20 ms",
        p50_p95("user_month", bold=True),
    )
    row("… its SQL alone (DBAPI execute + fetch), p50 / p95", "", p50_p95("user_month_db"))
    row("… p95 as a multiple of the PK lookup's", "", ratio("user_month", "pk", 95))
    row(
        "user page / `api/usage`: `UsageReader.user_view(user)`, p50 / p95",
        "p95 ≤ 20 ms",
        p50_p95("user_view", bold=True),
    )
    row("… p95 as a multiple of the PK lookup's", "", ratio("user_view", "pk", 95))
    row(
        "sessions per sampled user: this month (median) / all time (median, most)",
        "",
        sessions_per_user,
    )
    row("baseline: `SELECT count(*) FROM sessions`, median", "", median_of("count"))
    row(
        "everyone's month: `usage_sums(since=)` + `usage_by_user`, median",
        "≤ 500 ms",
        median_of("summary", bold=True),
    )
    row("… its SQL alone (DBAPI execute + fetch), median", "", median_of("summary_db"))
    row(
        "… sessions / users in the month / sessions read one by one",
        "",
        lambda f, r: (
            f"{f['admin_month_sessions']:,} / {f['admin_month_users']:,} / "
            f"{f['admin_month_read']:,}"
        ),
    )
    row(
        "baseline: every session of the month, `sessions(since=)` + `usage_by_user`, median",
        "",
        median_of("summary_every"),
    )
    row(
        "… as a multiple of `usage_sums` (same totals, checked)",
        "",
        lambda f, r: f"{med(f['summary_every']) / med(f['summary']):.1f}×",
    )
    row("… `usage_sums` as a multiple of count(*)", "", ratio("summary", "count"))
    row(
        "admin page / `api/users`: `UsageReader.users_view(since=<month>)`, median",
        "≤ 500 ms",
        median_of("users_view", bold=True),
    )
    row("… all time: `users_view()`, median", "", median_of("users_view_all"))
    row("… of which `Ledger.last_active()`, median", "", median_of("users_view_active"))
    row("… this month as a multiple of count(*)", "", ratio("users_view", "count"))
    row(
        "`/metrics` per-user totals, all time: `metrics_totals()` uncached, median",
        "",
        median_of("metrics_totals"),
    )
    size = args.batch_rows
    row(
        f"ingest: `add_rollups`, flushes of {size:,} new rows, rows/s",
        "≥ 20,000 rows/s",
        rate("ingest_ledger", size, bold=True),
    )
    row(
        f"baseline: plain INSERT of the same rows, {size:,} per transaction, rows/s",
        "",
        rate("ingest_raw", size),
    )
    row(
        "… add_rollups' rate as a fraction of the plain INSERT's",
        "",
        lambda f, r: f"{sum(f['ingest_raw']) / sum(f['ingest_ledger']):.2f}",
    )
    row(
        f"`add_rollups` rewriting the same {size:,} rows (cumulative update), rows/s",
        "",
        rate("ingest_rewrite", size),
    )
    row("`add_rollups`, flushes of 8 rows (one 8-GPU node), rows/s", "", rate("ingest_small", 8))
    millions = plan.sessions / 1e6
    row(
        "size on disk per million sessions (with their rollups)",
        "",
        lambda f, r: f"**{mib(r.size['total'] / millions)}**",
    )
    row(
        "… sessions table and its indexes, per million sessions",
        "",
        lambda f, r: mib(r.size["tables"]["sessions"] / millions),
    )
    row(
        "… rollups and their key, per million rows",
        "",
        lambda f, r: mib(r.size["tables"]["rollups"] / (plan.rollups / 1e6)),
    )
    row("… whole database", "", lambda f, r: mib(r.size["total"]))
    lines.append("")
    lines.append(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for r in all_results:
        lines.append("")
        lines.append(f"Query plans, {r.name}:")
        for title, statement, plan_lines in r.plans:
            lines.append(f"  {title}")
            lines.append("    " + " ".join(statement.split())[:300])
            lines += [f"      {line}" for line in plan_lines]
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--rollups", type=int, default=10_000_000)
    parser.add_argument(
        "--now",
        default="2026-11-27T12:00:00+00:00",
        help="the time the ledger is read at, ISO 8601 (default 2026-11-27T12:00:00+00:00)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--postgresql-url",
        default=os.environ.get("JGM_BENCH_POSTGRES_URL", ""),
        help="an empty database of its own, e.g. "
        "postgresql+psycopg://jgm:jgm@127.0.0.1:5432/jgm_bench (default: $JGM_BENCH_POSTGRES_URL)",
    )
    parser.add_argument(
        "--sqlite-path", type=Path, help="the SQLite file (default: a temporary one)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    parser.add_argument("--reuse", action="store_true", help="measure databases kept by --keep")
    parser.add_argument("--user-samples", type=int, default=200, help="users timed (default 200)")
    parser.add_argument("--admin-rounds", type=int, default=5, help="rounds of the monthly summary")
    parser.add_argument("--page-rounds", type=int, default=5, help="rounds of users_view")
    parser.add_argument("--ingest-batches", type=int, default=20, help="flushes timed (default 20)")
    parser.add_argument(
        "--batch-rows", type=int, default=1_000, help="rows per flush (default 1000)"
    )
    parser.add_argument("--small-batches", type=int, default=100, help="8-row flushes timed")
    args = parser.parse_args(argv)
    if args.db in ("postgresql", "both") and not args.postgresql_url:
        parser.error(
            "--postgresql-url is needed for PostgreSQL: give an empty database, e.g. "
            "postgresql+psycopg://jgm:jgm@127.0.0.1:5432/jgm_bench"
        )
    args.now = datetime.fromisoformat(args.now).astimezone(UTC)
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="ledger-scale-") as tmp:
        folder = Path(tmp)
        sqlite_path = args.sqlite_path or folder / "ledger.sqlite"
        header = machine(sqlite_path.parent)
        plan = make_plan(
            users=args.users,
            sessions=args.sessions,
            rollups=args.rollups,
            now=args.now,
            seed=args.seed,
        )
        log(f"plan: {plan.sessions:,} sessions, {plan.rollups:,} rollup rows")
        check_fill_format(plan, folder)
        databases: list[Database] = []
        if args.db in ("sqlite", "both"):
            databases.append(SQLiteDatabase(sqlite_path))
        if args.db in ("postgresql", "both"):
            databases.append(PostgreSQLDatabase(args.postgresql_url))
        all_results = []
        for db in databases:
            results = Results(db.name, db.describe())
            log(f"{db.name}: {results.describe}")
            try:
                if args.reuse:
                    if db.counts() != (plan.sessions, plan.rollups):
                        raise SystemExit(f"{db.name}: --reuse, but it does not hold this plan")
                else:
                    if isinstance(db, SQLiteDatabase) and sqlite_path.exists():
                        raise SystemExit(f"{sqlite_path} exists: remove it, or give --reuse")
                    with db.ledger() as ledger:
                        ledger.upgrade()
                    if db.counts() != (0, 0):
                        raise SystemExit(
                            f"{db.name}: the database holds sessions; give an empty one"
                        )
                    results.fill_s = timed(db.fill, plan, log)[0]
                    log(f"{db.name}: filled in {results.fill_s:.0f} s")
                with db.ledger() as ledger:
                    ledger.check_revision()
                    check_read_back(ledger, plan, random.Random(args.seed + 2))
                if db.counts() != (plan.sessions, plan.rollups):
                    raise SystemExit(f"{db.name}: counts {db.counts()} are not the plan's")
                results.size = db.size()
                log(f"{results.name}: {mib(results.size['total'])} on disk")
                measure_queries(db, plan, args, results, log)
                measure_ingest(db, plan, args, results, log)
            finally:
                if not args.keep:
                    db.drop()
            all_results.append(results)
        print(report(all_results, plan, args, header))


if __name__ == "__main__":
    main()
