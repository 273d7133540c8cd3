"""The ledger against real databases: a SQLite file and, when available, PostgreSQL.

PostgreSQL comes from JGM_TEST_POSTGRES_URL (scripts/start-postgres starts one
and prints it); each test gets a schema of its own. Without the variable the
PostgreSQL cases skip, unless JGM_REQUIRE_DOCKER=1 (CI), where they fail.
"""

import os
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, StatementError

from jupyter_gpu_meter.ledger import (
    Ledger,
    LedgerSchemaError,
    Money,
    Rollup,
    RollupRow,
    UTCDateTime,
    WriteBuffer,
)
from jupyter_gpu_meter.ledger import schema as ledger_schema
from jupyter_gpu_meter.ledger.models import StateModel, metadata
from jupyter_gpu_meter.pricing import PriceSnapshot, Pricing, charge

POSTGRES_URL = os.environ.get("JGM_TEST_POSTGRES_URL", "")
REQUIRE = os.environ.get("JGM_REQUIRE_DOCKER") == "1"
#: nothing listens on port 1: connections are refused at once
UNREACHABLE_POSTGRES = "postgresql+psycopg://jgm:jgm@127.0.0.1:1/jgm_test"

H100 = "NVIDIA H100 80GB HBM3"
T0 = datetime(2026, 11, 27, 16, 0, 0, 250_000, tzinfo=timezone.utc)
PRICING = Pricing(prices={H100: "2.49"}, cpu_price="0.05")


class Clock:
    """The only fake: time that tests move by hand."""

    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


def at(seconds):
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A URL to an empty database of each kind, dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        return
    if not POSTGRES_URL:
        reason = (
            "no PostgreSQL for the ledger tests: run scripts/start-postgres and export the "
            "JGM_TEST_POSTGRES_URL it prints"
        )
        if REQUIRE:
            pytest.fail(f"{reason} (JGM_REQUIRE_DOCKER=1: CI must run them)")
        pytest.skip(reason)
    schema = f"jgm_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def make_ledger(db_url, clock):
    ledgers = []

    def make(url=db_url, **kwargs):
        ledger = Ledger(url, clock=clock, **kwargs)
        ledgers.append(ledger)
        return ledger

    yield make
    for ledger in ledgers:
        ledger.close()


@pytest.fixture
def ledger(make_ledger):
    ledger = make_ledger()
    assert ledger.ensure_schema() is True
    return ledger


def open_session(ledger, container_id="c1", *, user="alice", gpus=("GPU-a",), started_at=T0):
    model = H100 if gpus else ""
    return ledger.open_session(
        container_id=container_id,
        user=user,
        server="",
        gpu_uuids=gpus,
        gpu_model=model,
        profile="gpu-1" if gpus else "cpu",
        price=PRICING.snapshot(model, len(gpus)),
        started_at=started_at,
    )


def rollup(minute_s=0, writer="meter-a", samples=30, mean=50.0, top=80, memory=1 << 30, **kw):
    values = dict(container_id="c1", gpu_uuid="GPU-a", minute=at(minute_s), writer=writer)
    values.update(kw)
    return RollupRow(
        **values, samples=samples, util_mean=mean, util_max=top, memory_max_bytes=memory
    )


#: the sessions table's columns since revision 0001
OLD_SESSIONS = sa.table(
    "sessions",
    *(sa.column(name, sa.String()) for name in ("container_id", "username", "server")),
    *(sa.column(name, sa.String()) for name in ("gpu_uuids", "gpu_model", "profile", "currency")),
    *(sa.column(name, Money()) for name in ("price_per_gpu_hour", "cpu_price_per_hour")),
    sa.column("minimum_charge", Money()),
    *(sa.column(name, sa.Integer()) for name in ("gpu_count", "billing_increment_s")),
    *(sa.column(name, UTCDateTime()) for name in ("started_at", "last_seen_at")),
)


def insert_old_session(connection, container_id="c1", *, user="alice", gpus=("GPU-a",)):
    """A session as an older revision's meter wrote it: only the columns of 0001."""
    connection.execute(
        OLD_SESSIONS.insert().values(
            container_id=container_id,
            username=user,
            server="",
            gpu_uuids=",".join(gpus),
            gpu_model=H100 if gpus else "",
            profile="gpu-1",
            currency="USD",
            price_per_gpu_hour=Decimal("2.49"),
            cpu_price_per_hour=Decimal("0.05"),
            minimum_charge=Decimal(0),
            gpu_count=len(gpus),
            billing_increment_s=1,
            started_at=T0,
            last_seen_at=T0,
        )
    )


@contextmanager
def write_lock(url):
    """Another connection holding the lock the ledger's writes need, until the block ends."""
    if url.startswith("sqlite"):
        connection = sqlite3.connect(make_url(url).database, isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
    else:
        engine = sa.create_engine(url)
        with engine.connect() as connection:
            connection.execute(sa.text("LOCK TABLE sessions, rollups IN ACCESS EXCLUSIVE MODE"))
            yield
            connection.rollback()
        engine.dispose()


# --- schema -------------------------------------------------------------------


def test_empty_database_says_what_to_run(make_ledger):
    ledger = make_ledger()
    with pytest.raises(LedgerSchemaError) as error:
        ledger.check_revision()
    message = str(error.value)
    assert "has no tables yet" in message
    assert f"jupyter-gpu-meter upgrade-db --db-url '{ledger.url}'" in message
    if ledger.dialect == "postgresql":
        assert ":***@" in message and ":jgm@" not in message
        assert "with the password in place of ***" in message


def test_ensure_schema_creates_a_fresh_database_once(make_ledger):
    ledger = make_ledger()
    assert ledger.ensure_schema() is True
    assert ledger.ensure_schema() is False
    ledger.check_revision()
    assert make_ledger().ensure_schema() is False


def test_models_match_the_migrations(ledger):
    with ledger.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []


def test_older_revision_is_not_migrated_behind_the_admins_back(make_ledger):
    ledger = make_ledger()
    with ledger.engine.begin() as connection:
        ledger_schema.upgrade(connection, "0001")
        insert_old_session(connection)  # sessions exist since 0001
    for check in (ledger.check_revision, ledger.ensure_schema):
        with pytest.raises(LedgerSchemaError) as error:
            check()
        message = str(error.value)
        head = ledger_schema.head_revision()
        assert (
            f"is at schema revision 0001; this version of jupyter-gpu-meter needs {head}" in message
        )
        assert "Back up the database" in message
        assert f"jupyter-gpu-meter upgrade-db --db-url '{ledger.url}'" in message
    ledger.upgrade()
    ledger.check_revision()
    assert ledger.get_session("c1").user == "alice"
    assert ledger.add_rollups([rollup()]) == []


def test_newer_revision_says_to_upgrade_the_package(ledger):
    with ledger.engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    for check in (ledger.check_revision, ledger.ensure_schema):
        with pytest.raises(LedgerSchemaError) as error:
            check()
        message = str(error.value)
        assert "at schema revision 0099, which this version" in message
        assert "newer jupyter-gpu-meter" in message
        assert "pip install --upgrade jupyter-gpu-meter" in message


def test_tables_without_a_revision_are_refused(ledger):
    with ledger.engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE alembic_version"))
    with pytest.raises(LedgerSchemaError, match="has tables but no alembic revision"):
        ledger.ensure_schema()


def test_unsupported_databases_are_named():
    with pytest.raises(ValueError, match=r"'mysql://u:\*\*\*@db/x' is not supported: use SQLite"):
        Ledger("mysql://u:secret@db/x")


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'wal.sqlite'}", lock_timeout=2.5)
    with ledger.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500
    ledger.close()


# --- sessions -----------------------------------------------------------------


def test_open_is_idempotent_and_never_changes_the_first(ledger):
    assert open_session(ledger) is True
    first = ledger.get_session("c1")
    assert open_session(ledger, user="mallory", gpus=("GPU-b", "GPU-c"), started_at=at(5)) is False
    assert ledger.get_session("c1") == first
    assert first.user == "alice"
    assert first.gpu_uuids == ("GPU-a",)
    assert first.gpu_count == 1
    assert first.price == PRICING.snapshot(H100, 1)
    assert first.price.price_per_gpu_hour == Decimal("2.49")
    assert first.running and first.ended_at is None and first.end_reason is None
    assert first.last_seen_at == T0


def test_price_snapshot_must_match_the_gpus(ledger):
    with pytest.raises(ValueError, match=r"price snapshot for 2 x .* does not match .* 1 x"):
        ledger.open_session(
            container_id="c1",
            user="alice",
            server="",
            gpu_uuids=["GPU-a"],
            gpu_model=H100,
            profile="",
            price=PRICING.snapshot(H100, 2),
            started_at=T0,
        )
    assert ledger.get_session("c1") is None


def test_gpu_uuids_are_a_list(ledger):
    with pytest.raises(TypeError, match="a list of UUIDs, not the string 'GPU-a'"):
        open_session(ledger, gpus="GPU-a")


def test_close_only_closes_open_sessions(ledger):
    open_session(ledger)
    assert ledger.close_session("c1", ended_at=at(20), reason="stopped") is True
    assert ledger.close_session("c1", ended_at=at(99), reason="gpu-idle") is False
    assert ledger.close_session("unknown", ended_at=at(20), reason="stopped") is False
    session = ledger.get_session("c1")
    assert (session.ended_at, session.end_reason, session.running) == (at(20), "stopped", False)
    assert session.duration(at(1000)) == timedelta(seconds=20)
    assert session.charge(at(1000)) == Decimal("2.49") * 20 / 3600
    assert ledger.get_session("unknown") is None


def test_an_end_before_the_start_is_the_start(ledger):
    open_session(ledger, started_at=at(10))
    assert ledger.close_session("c1", ended_at=at(3), reason="died") is True
    session = ledger.get_session("c1")
    assert session.ended_at == at(10)
    assert session.charge(at(50)) == 0


def test_running_sessions_charge_up_to_now(ledger):
    open_session(ledger, gpus=("GPU-a", "GPU-b"))
    open_session(ledger, "cpu", gpus=())
    gpu, cpu = ledger.open_sessions()
    assert gpu.charge(at(3600)) == Decimal("4.98")
    assert gpu.gpu_seconds(at(1.5)) == Decimal("3")
    assert cpu.charge(at(7200)) == Decimal("0.10")
    assert cpu.price.gpus == 0 and cpu.gpu_uuids == () and cpu.gpu_model == ""


def test_times_round_trip_tz_aware_utc_with_microseconds(ledger):
    tokyo = timezone(timedelta(hours=9))
    started = datetime(2026, 11, 28, 1, 2, 3, 456_789, tzinfo=tokyo)
    open_session(ledger, started_at=started)
    ledger.close_session("c1", ended_at=started + timedelta(microseconds=1), reason="stopped")
    session = ledger.get_session("c1")
    assert session.started_at == started
    assert session.started_at.tzinfo == timezone.utc
    assert session.started_at.isoformat() == "2026-11-27T16:02:03.456789+00:00"
    assert session.ended_at - session.started_at == timedelta(microseconds=1)
    assert session.last_seen_at.tzinfo == timezone.utc


def test_naive_datetimes_are_refused(ledger):
    naive = T0.replace(tzinfo=None)
    with pytest.raises(ValueError, match="refused: the ledger takes timezone-aware UTC"):
        open_session(ledger, started_at=naive)
    open_session(ledger)
    with pytest.raises(ValueError, match="ended_at .* refused"):
        ledger.close_session("c1", ended_at=naive, reason="stopped")
    with pytest.raises(ValueError, match="minute .* refused"):
        ledger.add_rollups([rollup(minute=naive)])
    # the column type refuses them too, whoever writes
    with ledger.engine.begin() as connection, pytest.raises(StatementError) as error:
        connection.execute(
            sa.insert(StateModel.__table__), {"key": "k", "value": "v", "updated_at": naive}
        )
    assert "naive datetime" in str(error.value) and "utcnow()" in str(error.value)


def test_touch_moves_last_seen_forward_on_open_sessions_only(ledger):
    open_session(ledger, "c1")
    open_session(ledger, "c2")
    ledger.close_session("c2", ended_at=at(5), reason="stopped")
    assert ledger.touch_sessions(["c1", "c2", "gone"], at(30)) == 1
    assert ledger.touch_sessions(["c1"], at(10)) == 0
    assert ledger.touch_sessions([], at(40)) == 0
    assert ledger.get_session("c1").last_seen_at == at(30)
    assert ledger.get_session("c2").last_seen_at == T0


def test_sessions_overlapping_a_range(ledger):
    open_session(ledger, "a", started_at=at(0))
    ledger.close_session("a", ended_at=at(10), reason="stopped")
    open_session(ledger, "b", started_at=at(5))
    ledger.close_session("b", ended_at=at(20), reason="stopped")
    open_session(ledger, "c", started_at=at(15))  # still running
    open_session(ledger, "d", user="bob", gpus=(), started_at=at(30))
    ledger.close_session("d", ended_at=at(40), reason="culled")

    def ids(**query):
        return [session.container_id for session in ledger.sessions(**query)]

    assert ids() == ["a", "b", "c", "d"]
    assert ids(user="alice") == ["a", "b", "c"]
    assert ids(user="bob") == ["d"]
    assert ids(user="nobody") == []
    assert ids(since=at(10)) == ["b", "c", "d"]  # a ended exactly at 10
    assert ids(until=at(5)) == ["a"]  # b starts exactly at 5
    assert ids(since=at(12), until=at(16)) == ["b", "c"]
    assert ids(since=at(100)) == ["c"]
    assert ids(user="alice", since=at(21), until=at(35)) == ["c"]
    assert [s.container_id for s in ledger.open_sessions()] == ["c"]


# --- rollups ------------------------------------------------------------------


def test_writing_the_same_batch_twice_changes_nothing(ledger):
    open_session(ledger)
    batch = [rollup(0), rollup(60, samples=60, mean=20.0), rollup(0, gpu_uuid="GPU-b")]
    assert ledger.add_rollups(batch) == []
    first = ledger.rollups("c1")
    assert ledger.add_rollups(batch) == []
    assert ledger.rollups("c1") == first
    assert [(r.gpu_uuid, r.minute, r.samples) for r in first] == [
        ("GPU-a", T0.replace(microsecond=0), 30),
        ("GPU-b", T0.replace(microsecond=0), 30),
        ("GPU-a", at(60).replace(microsecond=0), 60),
    ]


def test_a_writer_replaces_only_its_own_part_of_a_minute(ledger):
    open_session(ledger)
    ledger.add_rollups([rollup(writer="old", samples=30, mean=50.0, top=80, memory=1 << 30)])
    ledger.add_rollups([rollup(writer="new", samples=10, mean=10.0, top=20, memory=2 << 30)])
    (merged,) = ledger.rollups("c1")
    assert merged == Rollup(
        container_id="c1",
        gpu_uuid="GPU-a",
        minute=datetime(2026, 11, 27, 16, 0, tzinfo=timezone.utc),
        samples=40,
        util_mean=40.0,
        util_max=80,
        memory_max_bytes=2 << 30,
        writers=2,
    )
    # "new" goes on counting the same minute: its cumulative row replaces its own
    ledger.add_rollups([rollup(writer="new", samples=30, mean=30.0, top=90, memory=1 << 30)])
    (merged,) = ledger.rollups("c1")
    assert (merged.samples, merged.util_mean, merged.util_max) == (60, 40.0, 90)
    assert (merged.memory_max_bytes, merged.writers) == (1 << 30, 2)


def test_rows_are_stored_by_minute_and_the_last_of_a_batch_wins(ledger):
    open_session(ledger)
    ledger.add_rollups([rollup(1, samples=1), rollup(59.5, samples=59)])
    (merged,) = ledger.rollups("c1")
    assert merged.minute == datetime(2026, 11, 27, 16, 0, tzinfo=timezone.utc)
    assert merged.samples == 59


def test_rows_of_unknown_containers_come_back(ledger):
    open_session(ledger)
    orphan = rollup(container_id="not-yet")
    assert ledger.add_rollups([rollup(), orphan]) == [orphan]
    assert len(ledger.rollups("c1")) == 1
    assert ledger.rollups("not-yet") == []
    open_session(ledger, "not-yet")
    assert ledger.add_rollups([orphan]) == []
    assert ledger.rollups("not-yet")[0].samples == 30


def test_a_minute_with_no_samples_has_mean_zero(ledger):
    open_session(ledger)
    ledger.add_rollups([rollup(samples=0, mean=0.0, top=0, memory=0)])
    assert ledger.rollups("c1")[0].util_mean == 0.0


def test_concurrent_writers_on_one_database(ledger, make_ledger):
    open_session(ledger)
    errors = []

    def write(writer):
        other = make_ledger()
        try:
            for minute in range(20):
                other.add_rollups([rollup(minute * 60, writer=writer, samples=minute + 1)])
                other.touch_sessions(["c1"], at(minute * 60))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    rollups = ledger.rollups("c1")
    assert len(rollups) == 20
    assert all(r.writers == 4 and r.samples == 4 * (i + 1) for i, r in enumerate(rollups))


# --- state --------------------------------------------------------------------


def test_state_get_and_set(ledger, clock):
    assert ledger.get_state("docker.last_event") is None
    ledger.set_state("docker.last_event", "1764259200.123456789")
    clock.now = at(60)
    ledger.set_state("docker.last_event", "1764259260.5")
    ledger.set_state("other", "")
    assert ledger.get_state("docker.last_event") == "1764259260.5"
    assert ledger.get_state("other") == ""
    state = StateModel.__table__
    with ledger.engine.connect() as connection:
        updated = connection.execute(
            sa.select(state.c.updated_at).where(state.c.key == "docker.last_event")
        ).scalar_one()
    assert updated == at(60)


# --- retrying writes ------------------------------------------------------------


def test_buffered_writes_wait_for_a_locked_database_in_order(ledger, make_ledger, db_url):
    impatient = make_ledger(lock_timeout=0.2)
    buffer = WriteBuffer()
    buffer.add(open_session, impatient)
    buffer.add(impatient.add_rollups, [rollup()])
    buffer.add(impatient.close_session, "c1", ended_at=at(30), reason="stopped")
    with write_lock(db_url):
        assert buffer.flush() == 0
        assert len(buffer) == 3
        assert isinstance(buffer.last_error, OperationalError)
        assert buffer.flush() == 0
        assert len(buffer) == 3
    assert ledger.get_session("c1") is None
    assert buffer.flush() == 3
    assert len(buffer) == 0 and buffer.last_error is None and buffer.rejected == []
    session = ledger.get_session("c1")
    assert (session.ended_at, session.end_reason) == (at(30), "stopped")  # closed after opening
    assert ledger.rollups("c1")[0].samples == 30


def test_a_write_that_can_never_succeed_does_not_block_the_rest(ledger):
    buffer = WriteBuffer()
    buffer.add(open_session, ledger, "c1")
    buffer.add(open_session, ledger, "bad", started_at=T0.replace(tzinfo=None))
    buffer.add(ledger.close_session, "c1", ended_at=at(30), reason="stopped")
    assert buffer.flush() == 2
    assert len(buffer) == 0
    ((write, error),) = buffer.rejected
    assert write.args == (ledger, "bad")
    assert isinstance(error, ValueError) and "refused" in str(error)
    assert ledger.get_session("c1").ended_at == at(30)


def test_unreachable_postgresql_keeps_the_writes(clock):
    ledger = Ledger(UNREACHABLE_POSTGRES, clock=clock)
    assert "127.0.0.1:1" in ledger.url and "jgm:***@" in ledger.url
    buffer = WriteBuffer()
    buffer.add(ledger.set_state, "k", "v")
    buffer.add(ledger.touch_sessions, ["c1"], T0)
    with pytest.raises(OperationalError):
        ledger.get_state("k")
    assert buffer.flush() == 0
    assert len(buffer) == 2
    assert isinstance(buffer.last_error, OperationalError)
    assert "127.0.0.1" in str(buffer.last_error)
    assert [write.func for write in buffer.pending()] == [ledger.set_state, ledger.touch_sessions]
    ledger.close()


def test_snapshot_from_the_ledger_charges_like_the_original(ledger):
    price = PriceSnapshot(H100, 1, "2.49", "0", "USD", 60, "0.10")
    ledger.open_session(
        container_id="c1",
        user="alice",
        server="big",
        gpu_uuids=["GPU-a"],
        gpu_model=H100,
        profile="",
        price=price,
        started_at=T0,
    )
    stored = ledger.get_session("c1")
    assert stored.server == "big"
    assert stored.price == price
    for end in (T0, at(1), at(61), at(86400)):
        assert stored.charge(end) == charge(price, T0, end)


def test_a_long_end_reason_is_shortened_to_fit_not_refused(ledger):
    open_session(ledger)
    reason = "stopped: GPU unhealthy (" + "GPU-x: GPU is lost; " * 20 + ")"
    assert len(reason) > 255
    assert ledger.close_session("c1", ended_at=T0 + timedelta(minutes=1), reason=reason)
    stored = ledger.get_session("c1").end_reason
    assert len(stored) == 255 and stored.endswith("…") and reason.startswith(stored[:-1])
