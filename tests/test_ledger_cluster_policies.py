"""What the hub's policies read and write in the ledger in cluster mode, on SQLite and
PostgreSQL (see test_ledger.py): migration 0010, ``sessions.stop_reason`` and the close
that uses it, and each running session's last minutes of GPU activity."""

from datetime import timedelta

import sqlalchemy as sa
from alembic import command

from jupyter_gpu_meter.ledger import MinuteBusy
from jupyter_gpu_meter.ledger import schema as ledger_schema
from tests import test_ledger
from tests.test_ledger import T0, at, insert_old_session, rollup
from tests.test_ledger_nodes import start

db_url = test_ledger.db_url
clock = test_ledger.clock
make_ledger = test_ledger.make_ledger
ledger = test_ledger.ledger

MINUTE = timedelta(minutes=1)


# --- migration 0010 ----------------------------------------------------------


def test_upgrading_from_0009_gives_old_sessions_no_stop_reason(make_ledger):
    ledger = make_ledger()
    with ledger.engine.begin() as connection:
        ledger_schema.upgrade(connection, "0009")
        insert_old_session(connection)
    ledger.upgrade()
    ledger.check_revision()
    assert ledger.get_session("c1").stop_reason is None
    assert ledger.set_stop_reason("c1", "GPUs idle for 2 min")
    indexes = {index["name"] for index in sa.inspect(ledger.engine).get_indexes("rollups")}
    assert "ix_rollups_session_id_minute" in indexes


def test_downgrading_to_0009_drops_only_the_stop_reason_and_the_index(ledger):
    start(ledger)
    ledger.set_stop_reason("c1", "GPUs idle for 2 min")
    with ledger.engine.begin() as connection:
        command.downgrade(ledger_schema.alembic_config(connection), "0009")
    inspector = sa.inspect(ledger.engine)
    columns = {column["name"] for column in inspector.get_columns("sessions")}
    assert "stop_reason" not in columns and "node" in columns
    indexes = {index["name"] for index in inspector.get_indexes("rollups")}
    assert "ix_rollups_session_id_minute" not in indexes
    with ledger.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM sessions")).scalar_one() == 1


# --- the stop reason ---------------------------------------------------------


def test_a_session_asked_to_stop_ends_with_the_reason_whatever_the_agent_saw(ledger):
    start(ledger)
    assert ledger.set_stop_reason("c1", "GPUs idle for 2 min")
    assert ledger.get_session("c1").stop_reason == "GPUs idle for 2 min"
    assert ledger.close_session("c1", ended_at=at(300), reason="stopped")
    session = ledger.get_session("c1")
    assert session.end_reason == "stopped: GPUs idle for 2 min"
    assert session.ended_at == at(300)


def test_a_failed_ask_is_forgotten_and_the_close_keeps_its_own_reason(ledger):
    start(ledger)
    ledger.set_stop_reason("c1", "GPUs idle for 2 min")
    assert ledger.set_stop_reason("c1", None)  # the hub refused the stop
    ledger.close_session("c1", ended_at=at(60), reason="exited with code 0")
    assert ledger.get_session("c1").end_reason == "exited with code 0"


def test_only_an_open_session_takes_a_stop_reason(ledger):
    start(ledger)
    ledger.close_session("c1", ended_at=at(60), reason="exited with code 0")
    assert not ledger.set_stop_reason("c1", "late")
    assert not ledger.set_stop_reason("nobody", "late")
    assert ledger.get_session("c1").stop_reason is None


def test_a_long_stop_reason_is_clipped_to_the_column(ledger):
    start(ledger)
    ledger.set_stop_reason("c1", "x" * 300)
    assert len(ledger.get_session("c1").stop_reason) == 255
    ledger.close_session("c1", ended_at=at(60), reason="stopped")
    end_reason = ledger.get_session("c1").end_reason
    assert len(end_reason) == 255 and end_reason.startswith("stopped: xxx")


# --- recent minutes ----------------------------------------------------------


def test_recent_minutes_merge_gpus_and_writers_from_since_on(ledger):
    start(ledger, gpus=("GPU-a", "GPU-b"))
    start(ledger, "c2", gpus=("GPU-c",))
    ledger.add_rollups(
        [
            rollup(0, top=90),  # before since: not read
            rollup(60, top=3),
            rollup(60, gpu_uuid="GPU-b", top=4),
            rollup(120, top=2),
            rollup(120, writer="meter-b", top=40),  # a second writer of the minute
            rollup(180, gpu_uuid="GPU-b", top=1),  # GPU-a unread in this minute
            rollup(240, top=0, samples=0),  # a row without a reading (energy only)
            rollup(60, container_id="c2", gpu_uuid="GPU-c", top=7),
        ]
    )
    minute = T0.replace(second=0, microsecond=0)
    found = ledger.recent_minutes(["c1", "c2", "c3"], at(61))
    assert found == {
        "c1": [
            MinuteBusy(minute + MINUTE, 4, 2),
            MinuteBusy(minute + 2 * MINUTE, 40, 1),
            MinuteBusy(minute + 3 * MINUTE, 1, 1),
        ],
        "c2": [MinuteBusy(minute + MINUTE, 7, 1)],
        "c3": [],
    }
    assert ledger.recent_minutes([], T0) == {}
