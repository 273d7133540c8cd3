"""Busy time, energy and process groups in the ledger, on SQLite and PostgreSQL
(see test_ledger.py): migration 0006, the rollups' new figures, process groups,
efficiency per session and per user."""

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from alembic import command

from jupyter_gpu_meter.ledger import (
    EfficiencySum,
    ProcessGroupUsage,
    ProcessUsageRow,
    RollupRow,
    SessionEfficiency,
)
from jupyter_gpu_meter.ledger import schema as ledger_schema
from jupyter_gpu_meter.ledger.models import RollupModel
from jupyter_gpu_meter.pricing import Pricing, energy_units
from tests import test_ledger
from tests.test_ledger import H100, T0, at, insert_old_session, open_session, rollup

db_url = test_ledger.db_url
clock = test_ledger.clock
make_ledger = test_ledger.make_ledger
ledger = test_ledger.ledger

KWH = 3_600_000_000  # mJ


def start(ledger, container_id, user="alice", *, gpus=("GPU-a",), energy="0", currency="USD"):
    model = H100 if gpus else ""
    pricing = Pricing(prices={H100: "2.49"}, energy_price=energy, currency=currency)
    assert ledger.open_session(
        container_id=container_id,
        user=user,
        server="",
        gpu_uuids=gpus,
        gpu_model=model,
        profile="p",
        price=pricing.snapshot(model, len(gpus)),
        started_at=T0,
    )
    return ledger.get_session(container_id).id


def group(name="python", writer="meter-a", container_id="c1", **kw):
    values = dict(
        container_id=container_id,
        process_group=name,
        writer=writer,
        samples=10,
        present_ms=10_000,
        busy_ms=5_000,
        memory_max_bytes=1 << 30,
        first_seen=at(0),
        last_seen=at(9),
    )
    return ProcessUsageRow(**{**values, **kw})


# --- migration 0006 -----------------------------------------------------------------


def test_upgrading_from_0005_keeps_old_rows_with_defaults(make_ledger):
    ledger = make_ledger()
    with ledger.engine.begin() as connection:
        ledger_schema.upgrade(connection, "0005")
        insert_old_session(connection)
        old_rollups = sa.table(
            "rollups",
            *(sa.column(name) for name in ("session_id", "gpu_uuid", "writer", "samples")),
            *(sa.column(name) for name in ("util_mean", "util_max", "memory_max_bytes")),
            sa.column("minute", test_ledger.UTCDateTime()),
        )
        session_id = connection.execute(sa.text("SELECT id FROM sessions")).scalar_one()
        connection.execute(
            old_rollups.insert().values(
                session_id=session_id,
                gpu_uuid="GPU-a",
                writer="old",
                samples=60,
                util_mean=50.0,
                util_max=90,
                memory_max_bytes=1 << 30,
                minute=at(0).replace(second=0, microsecond=0),
            )
        )
    ledger.upgrade()
    ledger.check_revision()
    session = ledger.get_session("c1")
    assert session.price.energy_price_per_kwh == Decimal(0)
    with ledger.engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT energy_price_per_kwh FROM sessions").scalar()
    # stored as the ledger writes money (SQLite: fixed-point text, compared as text)
    assert str(stored) == "0.000000"
    # busy time was not measured then: unknown, not 0 % busy (nor all of it idle)
    [merged] = ledger.rollups("c1")
    assert (merged.busy_ms, merged.energy_mj, merged.busy_source) == (0, None, "")
    assert ledger.efficiency_of([session.id]) == {
        session.id: SessionEfficiency(session.id, None, 1 << 30, None, "")
    }
    assert ledger.add_process_usage([group()]) == []
    # the session ran on across the upgrade: its busy time from then on, its source
    later = at(0).replace(second=0, microsecond=0) + timedelta(minutes=1)
    row = RollupRow("c1", "GPU-a", later, "new", 60, 25.0, 30, 1 << 20, 15_000, 7, "utilization")
    assert ledger.add_rollups([row]) == []
    assert ledger.efficiency_of([session.id]) == {
        session.id: SessionEfficiency(session.id, 15_000, 1 << 30, 7, "utilization")
    }
    assert [r.busy_source for r in ledger.rollups("c1")] == ["", "utilization"]


def test_downgrading_to_0005_drops_only_what_0006_added(ledger):
    open_session(ledger)
    ledger.add_rollups([rollup(busy_ms=1)])
    with ledger.engine.begin() as connection:
        command.downgrade(ledger_schema.alembic_config(connection), "0005")
    inspector = sa.inspect(ledger.engine)
    assert "process_usage" not in inspector.get_table_names()
    rollup_columns = {column["name"] for column in inspector.get_columns("rollups")}
    assert not {"busy_ms", "energy_mj", "busy_source"} & rollup_columns
    session_columns = {column["name"] for column in inspector.get_columns("sessions")}
    assert "energy_price_per_kwh" not in session_columns
    with ledger.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM rollups")).scalar_one() == 1


# --- rollups' busy time and energy --------------------------------------------------


def test_the_energy_price_snapshot_is_stored_with_the_session(ledger):
    start(ledger, "c1", energy="0.30", currency="EUR")
    price = ledger.get_session("c1").price
    assert (price.energy_price_per_kwh, price.currency) == (Decimal("0.30"), "EUR")


def test_writers_of_a_minute_add_up_busy_time_and_energy(ledger):
    open_session(ledger)
    assert (
        ledger.add_rollups(
            [
                rollup(writer="a", busy_ms=20_000, energy_mj=None),
                rollup(writer="b", busy_ms=10_000, energy_mj=7_000),
                rollup(writer="c", busy_ms=1, energy_mj=3_000),
                rollup(minute_s=60, writer="a", energy_mj=None, busy_source="sm-activity"),
            ]
        )
        == []
    )
    first, second = ledger.rollups("c1")
    assert (first.writers, first.busy_ms, first.energy_mj) == (3, 30_001, 10_000)
    assert first.busy_source == "utilization"
    assert (second.busy_ms, second.energy_mj, second.busy_source) == (0, None, "sm-activity")
    # a writer's row again replaces its own: cumulative
    ledger.add_rollups([rollup(writer="b", busy_ms=15_000, energy_mj=9_000)])
    first, _ = ledger.rollups("c1")
    assert (first.busy_ms, first.energy_mj) == (35_001, 12_000)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(busy_ms=-1), "busy_ms and energy_mj cannot be negative"),
        (dict(energy_mj=-5), "busy_ms and energy_mj cannot be negative"),
        (dict(busy_source="gpm"), "busy_source must be one of"),
    ],
)
def test_impossible_rollup_figures_are_refused(ledger, change, message):
    open_session(ledger)
    with pytest.raises(ValueError, match=message):
        ledger.add_rollups([rollup(**change)])


# --- process groups -----------------------------------------------------------------


def test_process_groups_are_upserted_and_merged_over_writers(ledger):
    session_id = start(ledger, "c1")
    rows = [
        group("python", "a"),
        group("python", "b", samples=5, busy_ms=1_000, memory_max_bytes=2 << 30, last_seen=at(20)),
        group("torchrun", "a", present_ms=90_000, busy_ms=5_000, first_seen=at(-5)),
        group("unknown", "a", busy_ms=0, present_ms=500),
        group("bash", "a", busy_ms=0, present_ms=800),
    ]
    assert ledger.add_process_usage(rows) == []
    assert ledger.add_process_usage(rows) == []  # a retried write changes nothing
    assert ledger.process_groups(session_id) == [
        # the busiest first
        ProcessGroupUsage("python", 15, 20_000, 6_000, 2 << 30, at(0), at(20)),
        ProcessGroupUsage("torchrun", 10, 90_000, 5_000, 1 << 30, at(-5), at(9)),
        # equal busy time: the longer present first
        ProcessGroupUsage("bash", 10, 800, 0, 1 << 30, at(0), at(9)),
        ProcessGroupUsage("unknown", 10, 500, 0, 1 << 30, at(0), at(9)),
    ]
    # cumulative: the writer's newer row replaces its older one; the last of a batch wins
    ledger.add_process_usage([group("python", "a", busy_ms=1), group("python", "a", busy_ms=2)])
    python = [g for g in ledger.process_groups(session_id) if g.process_group == "python"]
    assert python[0].busy_ms == 1_002
    assert ledger.process_groups(session_id + 100) == []


def test_process_rows_of_unknown_containers_come_back(ledger):
    start(ledger, "c1")
    stranger = group(container_id="nobody")
    assert ledger.add_process_usage([group(), stranger]) == [stranger]
    assert ledger.add_process_usage([]) == []


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(process_group=""), "needs a writer and a process group"),
        (dict(writer=""), "needs a writer and a process group"),
        (dict(process_group="x" * 65), "at most 64 characters"),
        (dict(present_ms=-1), "cannot be negative"),
        (dict(first_seen=T0.replace(tzinfo=None)), "first_seen .* refused"),
    ],
)
def test_impossible_process_rows_are_refused(ledger, change, message):
    start(ledger, "c1")
    with pytest.raises(ValueError, match=message):
        ledger.add_process_usage([replace(group(), **change)])


def test_a_session_row_going_takes_its_process_groups(ledger):
    session_id = start(ledger, "c1")
    ledger.add_process_usage([group()])
    with ledger.engine.begin() as connection:
        if ledger.dialect == "sqlite":
            assert connection.execute(sa.text("PRAGMA foreign_keys")).scalar_one() == 1
        connection.execute(sa.text("DELETE FROM sessions WHERE id = :id"), {"id": session_id})
    assert ledger.process_groups(session_id) == []


# --- efficiency per session ---------------------------------------------------------


def test_efficiency_of_sessions_in_one_query(ledger):
    one = start(ledger, "c1", gpus=("GPU-a", "GPU-b"))
    two = start(ledger, "c2", gpus=("GPU-c",))
    cpu = start(ledger, "c3", gpus=())
    ledger.add_rollups(
        [
            rollup(container_id="c1", gpu_uuid="GPU-a", busy_ms=30_000, energy_mj=5, memory=3),
            rollup(container_id="c1", gpu_uuid="GPU-b", busy_ms=1_000, energy_mj=None, memory=7),
            rollup(container_id="c1", gpu_uuid="GPU-b", minute_s=60, busy_ms=500, memory=2),
            rollup(container_id="c2", gpu_uuid="GPU-c", busy_ms=10, busy_source="sm-activity"),
            # a minute with energy but no sample: says nothing of where busy time came from
            rollup(container_id="c2", gpu_uuid="GPU-c", minute_s=60, samples=0, energy_mj=9),
        ]
    )
    # both sources among c1's GPUs
    ledger.add_rollups(
        [
            rollup(
                container_id="c1", gpu_uuid="GPU-b", writer="b", memory=1, busy_source="sm-activity"
            )
        ]
    )
    assert ledger.efficiency_of([two, one, cpu, 999, one]) == {
        one: SessionEfficiency(one, 31_500, 7, 5, "mixed"),
        two: SessionEfficiency(two, 10, 1 << 30, 9, "sm-activity"),
        cpu: SessionEfficiency(cpu, None, None, None, ""),
        999: SessionEfficiency(999, None, None, None, ""),
    }
    assert ledger.efficiency_of([]) == {}


def test_a_session_with_only_energy_rows_has_no_busy_time(ledger):
    one = start(ledger, "c1")
    ledger.add_rollups([rollup(samples=0, energy_mj=40)])
    assert ledger.efficiency_of([one]) == {one: SessionEfficiency(one, None, None, 40, "")}


# --- efficiency per user over a range -----------------------------------------------


@pytest.fixture
def month(ledger):
    """alice: two sessions at two energy prices and one in EUR; bob: one without energy."""
    start(ledger, "a1", "alice", energy="0.30")
    start(ledger, "a2", "alice", gpus=("GPU-b",), energy="0.50")
    start(ledger, "a3", "alice", gpus=("GPU-c",), energy="0.20", currency="EUR")
    start(ledger, "b1", "bob", gpus=("GPU-d",), energy="0.30")
    start(ledger, "z1", "zoe", gpus=())  # CPU only: no rollups
    rows = []
    for minute in range(5):  # minutes 0..4 after T0's minute
        rows += [
            rollup(minute * 60, container_id="a1", busy_ms=1_000, energy_mj=KWH),
            rollup(minute * 60, container_id="a2", gpu_uuid="GPU-b", busy_ms=10, energy_mj=KWH),
            rollup(minute * 60, container_id="a3", gpu_uuid="GPU-c", energy_mj=3),
            rollup(minute * 60, container_id="b1", gpu_uuid="GPU-d", busy_ms=7),
        ]
    ledger.add_rollups(rows)
    return ledger


def units(kwh, price):
    return energy_units(kwh * KWH, price)


def test_efficiency_by_user_prices_energy_per_session(month):
    assert month.efficiency_by_user() == [
        EfficiencySum("alice", 0, 15, energy_units(15, "0.20"), "EUR"),
        EfficiencySum("alice", 5 * 1_010, 10 * KWH, units(5, "0.30") + units(5, "0.50"), "USD"),
        EfficiencySum("bob", 35, None, 0, "USD"),
    ]
    assert units(5, "0.30") + units(5, "0.50") == 4 * 3_600_000_000  # 1.50 + 2.50 = 4.00


def test_efficiency_by_user_counts_the_minutes_inside_the_range(month):
    minute = T0.replace(second=0, microsecond=0)
    since, until = minute + timedelta(minutes=1), minute + timedelta(minutes=3)
    [usd] = [
        s
        for s in month.efficiency_by_user(user="alice", since=since, until=until)
        if s.currency == "USD"
    ]
    assert (usd.busy_gpu_ms, usd.energy_mj) == (2 * 1_010, 4 * KWH)
    assert usd.energy_units == units(2, "0.30") + units(2, "0.50")
    assert month.efficiency_by_user(user="bob", since=minute + timedelta(minutes=5)) == []
    assert month.efficiency_by_user(user="zoe") == []
    # a range before any session: nothing, whatever the rollups hold
    assert month.efficiency_by_user(until=minute) == []


def test_efficiency_by_user_refuses_naive_times(month):
    with pytest.raises(ValueError, match="since .* refused"):
        month.efficiency_by_user(since=T0.replace(tzinfo=None))
    with pytest.raises(ValueError, match="until .* refused"):
        month.efficiency_by_user(until=T0.replace(tzinfo=None))


# --- stored sums of closed sessions -------------------------------------------------


def expected_by_rollups(ledger, since, until):
    """efficiency_by_user the slow way: every rollup row in range, priced per session."""
    per_session: dict[int, list] = {}
    sessions = {s.id: s for s in ledger.sessions()}
    r = RollupModel.__table__.c
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            sa.select(r.session_id, r.minute, r.samples, r.busy_ms, r.energy_mj)
        ).all()
    for session_id, minute, samples, busy, energy in rows:
        if (since and minute < since) or (until and minute >= until):
            continue
        entry = per_session.setdefault(session_id, [0, 0, None])
        entry[0] += samples
        entry[1] += busy
        if energy is not None:
            entry[2] = (entry[2] or 0) + energy
    sums = {}
    for session_id, (samples, busy, energy) in per_session.items():
        session = sessions[session_id]
        entry = sums.setdefault((session.user, session.price.currency), [None, None, 0])
        if samples:
            entry[0] = (entry[0] or 0) + busy
        if energy is not None:
            entry[1] = (entry[1] or 0) + energy
            entry[2] += energy_units(energy, session.price.energy_price_per_kwh)
    return [EfficiencySum(u, b, e, n, c) for (u, c), (b, e, n) in sorted(sums.items())]


def test_closed_sessions_are_added_up_from_their_stored_sums_to_the_same_totals(ledger):
    minute = T0.replace(second=0, microsecond=0)
    plan = [  # container, user, energy price, first minute, minutes, closed
        ("a1", "alice", "0.30", 0, 10, True),
        ("a2", "alice", "0.50", 5, 20, False),  # running
        ("a3", "alice", "0.20", 30, 5, True),
        ("b1", "bob", "0.30", -5, 50, True),  # crosses every edge below
        ("c1", "cy", "0", 0, 3, True),  # energy not charged
        ("d1", "dee", "0.30", 0, 0, True),  # closed without a rollup
    ]
    for n, (container, user, price, first, minutes, closed) in enumerate(plan):
        gpu = f"GPU-{n}"
        start(ledger, container, user, gpus=(gpu,), energy=price)
        ledger.add_rollups(
            rollup(
                (first + m) * 60,
                container_id=container,
                gpu_uuid=gpu,
                busy_ms=1_000 + m,
                energy_mj=None if m == 2 else 7 * KWH // 1000 + m,
            )
            for m in range(minutes)
        )
        if closed:
            ledger.close_session(
                container, ended_at=minute + timedelta(minutes=first + minutes), reason="stopped"
            )
    stored = ledger.get_session  # the stored sums are what makes the totals fast
    with ledger.engine.connect() as connection:
        unsummed = connection.execute(
            sa.text("SELECT container_id FROM sessions WHERE rollup_samples IS NULL")
        ).all()
    assert unsummed == [("a2",)] and stored("a2").ended_at is None
    for since_m, until_m in [(None, None), (0, 60), (3, 12), (6, None), (None, 31), (40, 41)]:
        since = None if since_m is None else minute + timedelta(minutes=since_m)
        until = None if until_m is None else minute + timedelta(minutes=until_m)
        expected = expected_by_rollups(ledger, since, until)
        assert ledger.efficiency_by_user(since=since, until=until) == expected, (since_m, until_m)
        for user in ("alice", "bob", "dee"):
            mine = [s for s in expected if s.user == user]
            assert ledger.efficiency_by_user(user=user, since=since, until=until) == mine


def test_rollups_written_after_a_session_closed_update_its_sums(ledger):
    start(ledger, "c1", energy="0.30")
    ledger.add_rollups([rollup(0, container_id="c1", busy_ms=10, energy_mj=KWH)])
    ledger.close_session("c1", ended_at=at(30), reason="stopped")
    [before] = ledger.efficiency_by_user()
    # the meter's last flush comes after the session closed: another writer, the same minute
    ledger.add_rollups([rollup(0, container_id="c1", writer="late", busy_ms=5, energy_mj=KWH)])
    [after] = ledger.efficiency_by_user()
    assert (before.busy_gpu_ms, before.energy_mj) == (10, KWH)
    assert (after.busy_gpu_ms, after.energy_mj, after.energy_units) == (
        15,
        2 * KWH,
        units(2, "0.30"),
    )


def test_a_session_whose_energy_charge_would_not_fit_64_bits_is_added_up_from_rollups(ledger):
    start(ledger, "c1", energy="999999999999")
    ledger.add_rollups([rollup(0, container_id="c1", busy_ms=10, energy_mj=10**7)])
    ledger.close_session("c1", ended_at=at(30), reason="stopped")
    with ledger.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT rollup_samples FROM sessions").scalar() is None
    [total] = ledger.efficiency_by_user()
    assert total.energy_units == energy_units(10**7, "999999999999") > 2**63


def test_upgrading_adds_up_the_closed_sessions_rollups(make_ledger):
    ledger = make_ledger()
    with ledger.engine.begin() as connection:
        ledger_schema.upgrade(connection, "0005")
        for container, gpus in (("c1", ("GPU-a",)), ("c2", ("GPU-b",)), ("c3", ())):
            insert_old_session(connection, container, gpus=gpus)
        connection.exec_driver_sql(
            "UPDATE sessions SET ended_at = last_seen_at WHERE container_id != 'c2'"
        )
        ids = dict(connection.exec_driver_sql("SELECT container_id, id FROM sessions").all())
        old_rollups = sa.table(
            "rollups",
            *(sa.column(name) for name in ("session_id", "gpu_uuid", "writer", "samples")),
            *(sa.column(name) for name in ("util_mean", "util_max", "memory_max_bytes")),
            sa.column("minute", test_ledger.UTCDateTime()),
        )
        for container, minutes in (("c1", (0, 1, 2)), ("c2", (0,))):
            for m in minutes:
                connection.execute(
                    old_rollups.insert().values(
                        session_id=ids[container],
                        gpu_uuid="GPU-a",
                        writer="old",
                        samples=60,
                        util_mean=50.0,
                        util_max=90,
                        memory_max_bytes=1,
                        minute=at(m * 60).replace(second=0, microsecond=0),
                    )
                )
    ledger.upgrade()
    with ledger.engine.connect() as connection:
        stored = {
            row[0]: tuple(row[1:])
            for row in connection.exec_driver_sql(
                "SELECT container_id, rollup_samples, busy_ms, energy_mj, energy_units "
                "FROM sessions"
            )
        }
    # the old rollups measured no busy time: no busy samples, busy unknown
    assert stored == {"c1": (0, 0, None, 0), "c2": (None,) * 4, "c3": (0, 0, None, 0)}
    assert ledger.efficiency_by_user() == [EfficiencySum("alice", None, None, 0, "USD")]


def test_sqlite_plans_find_efficiency_through_indexes_not_whole_tables(tmp_path):
    """What keeps busy time and energy totals fast on a big SQLite ledger
    (docs/benchmarks.md): no statement walks the sessions or the rollups table."""
    ledger = test_ledger.Ledger(f"sqlite:///{tmp_path / 'plans.sqlite'}")
    ledger.ensure_schema()
    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    start(ledger, "c1")  # running: its rollups are read for the totals
    ledger.add_rollups([rollup(container_id="c1")])
    sa.event.listen(ledger.engine, "before_cursor_execute", record)
    ledger.efficiency_by_user(since=at(0))
    ledger.efficiency_by_user(since=at(0), until=at(3600))
    ledger.efficiency_by_user(user="alice", since=at(0), until=at(3600))
    ledger.efficiency_of([1, 2])
    ledger.process_groups(1)
    sa.event.remove(ledger.engine, "before_cursor_execute", record)
    assert len(statements) == 4 + 5 + 5 + 1 + 1  # sums, running, edges, their rollups
    with ledger.engine.connect() as connection:
        for statement, parameters in statements:
            plan = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            steps = [row[3] for row in plan]
            walks = {"SCAN sessions", "SCAN rollups", "SCAN process_usage"}
            assert not walks & set(steps), (statement, steps)
            assert all("INDEX" in step or "B-TREE" in step for step in steps), (statement, steps)
    ledger.close()
