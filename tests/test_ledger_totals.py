"""Totals the database adds up (Ledger.usage_sums), against the same totals computed
session by session, on SQLite and PostgreSQL (see test_ledger.py)."""

from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from jupyter_gpu_meter import pricing
from jupyter_gpu_meter.ledger import Ledger, RollupRow, truncate_to_minute
from jupyter_gpu_meter.ledger import schema as ledger_schema
from jupyter_gpu_meter.ledger.models import SessionModel
from jupyter_gpu_meter.pricing import Pricing
from jupyter_gpu_meter.usage import clip, usage_by_user
from tests import test_ledger
from tests.test_ledger import H100, T0, at

db_url = test_ledger.db_url
clock = test_ledger.clock
make_ledger = test_ledger.make_ledger
ledger = test_ledger.ledger

USD = Pricing(prices={H100: "2.49"}, cpu_price="0.05", minimum_charge="0.10")
#: an older configuration: another currency, billed per started minute
EUR = Pricing(prices={H100: "2.10"}, currency="EUR", billing_increment=60)


def start(ledger, container_id, user, at_s, *, gpus=1, prices=USD):
    uuids = tuple(f"GPU-{container_id}-{i}" for i in range(gpus))
    model = H100 if gpus else ""
    assert ledger.open_session(
        container_id=container_id,
        user=user,
        server="",
        gpu_uuids=uuids,
        gpu_model=model,
        profile="p",
        price=prices.snapshot(model, gpus),
        started_at=at(at_s),
    )


def run(ledger, container_id, user, start_s, end_s, **kwargs):
    start(ledger, container_id, user, start_s, **kwargs)
    assert ledger.close_session(container_id, ended_at=at(end_s), reason="stopped")


@pytest.fixture
def history(ledger):
    """Three users' sessions around a range [1000 s, 5000 s) from T0."""
    run(ledger, "a1", "ada", 0, 1500, gpus=2)  # crosses since
    run(ledger, "a2", "ada", 1200, 1260.5)  # inside
    run(ledger, "a3", "ada", 2000, 2000.000001, gpus=8)  # inside, one microsecond
    run(ledger, "a4", "ada", 3000, 3000)  # no duration: counted nowhere
    run(ledger, "a5", "ada", 4000, 6000, prices=EUR)  # crosses until
    run(ledger, "b1", "bob", 1000, 5000, gpus=0)  # exactly the range
    run(ledger, "b2", "bob", 100, 900)  # before it
    run(ledger, "b3", "bob", 1100, 1161, prices=EUR)  # inside, another currency
    run(ledger, "c1", "cy", 5000, 5100)  # after it
    start(ledger, "c2", "cy", 2500, gpus=4)  # running
    start(ledger, "c3", "cy", 7000)  # running, starts after the range
    return ledger


RANGES = [
    (None, None),
    (at(1000), None),
    (None, at(5000)),
    (at(1000), at(5000)),
    (at(1200), at(1260.5)),
    (at(9000), None),
]


@pytest.mark.parametrize("since, until", RANGES)
@pytest.mark.parametrize("user", [None, "ada", "bob", "nobody"])
def test_the_database_adds_up_what_each_session_would(history, since, until, user):
    now = at(8000)
    expected = usage_by_user(
        history.sessions(user=user, since=since, until=until), now=now, since=since, until=until
    )
    sums, others = history.usage_sums(user=user, since=since, until=until)
    assert usage_by_user(others, now=now, since=since, until=until, sums=sums) == expected
    # only running sessions and those crossing an edge of the range are read one by one
    for session in others:
        crosses = (since and session.started_at < since) or (until and session.end(now) > until)
        assert session.running or crosses, session.container_id


def test_whole_history_is_added_up_by_the_database(history):
    now = at(8000)
    sums, others = history.usage_sums()
    assert sorted(s.container_id for s in others) == ["c2", "c3"]  # the running ones
    assert {(p.user, p.currency): p.sessions for p in sums} == {
        ("ada", "EUR"): 1,
        ("ada", "USD"): 3,  # a4 had no duration
        ("bob", "EUR"): 1,
        ("bob", "USD"): 2,
        ("cy", "USD"): 1,
    }
    rows = usage_by_user(others, now=now, sums=sums)
    ada = {row.currency: row for row in rows if row.user == "ada"}
    # a1: 2 GPUs x 1500 s; a2: 60.5 s; a3: 8 GPUs x 1 us
    assert ada["USD"].gpu_hours == Decimal("3060.500008") / 3600
    # a1 2 x 2.49 x 1500 s; a2 (61 billed seconds: 0.042) and a3 the minimum, 0.10
    assert ada["USD"].charges == Decimal("4.98") * 1500 / 3600 + 2 * Decimal("0.10")


def test_a_closed_session_keeps_its_gpu_time_and_charge(ledger):
    run(ledger, "c1", "ada", 0, 3600.5, gpus=2)
    run(ledger, "c2", "ada", 0, 0)
    run(ledger, "c4", "ada", 0, 20)
    start(ledger, "c3", "ada", 0)
    stored = stored_sums(ledger)
    assert stored["c1"] == (7_201_000_000, 2 * 2_490_000 * 3601)  # 3,601 billed seconds
    assert stored["c2"] == (0, 0)
    assert stored["c4"] == (20_000_000, 100_000 * 3600)  # the minimum charge, 0.10
    assert stored["c3"] == (None, None)  # running: nothing to store yet
    session = ledger.get_session("c1")
    assert pricing.from_charge_units(stored["c1"][1]) == session.charge(at(99))


def stored_sums(ledger):
    table = SessionModel.__table__
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            sa.select(table.c.container_id, table.c.gpu_microseconds, table.c.charge_units)
        )
        return {cid: (gpu_us, units) for cid, gpu_us, units in rows}


def test_sums_beyond_64_bits_are_added_up_without_overflow(ledger):
    """SQLite's SUM stops at 2**63 - 1: the ledger adds those rows up itself."""
    dear = Pricing(prices={H100: "500000000000"})  # 5e17 charge units per second
    for i in range(3):
        run(ledger, f"c{i}", "ada", 0, 10, prices=dear)
    units = stored_sums(ledger)["c0"][1]
    assert units == 5 * 10**17 * 10 and 3 * units > 2**63 - 1
    sums, others = ledger.usage_sums()
    assert others == []
    (row,) = usage_by_user(others, now=at(99), sums=sums)
    assert row.charges == 3 * Decimal("500000000000") * 10 / 3600
    assert row.sessions == 3


def test_a_charge_beyond_64_bits_is_charged_from_its_snapshot(ledger):
    dear = Pricing(prices={H100: "999999999999"})
    run(ledger, "c1", "ada", 0, 3600 * 24 * 365, gpus=8, prices=dear)
    assert stored_sums(ledger)["c1"][1] is None
    sums, others = ledger.usage_sums()
    assert sums == [] and [s.container_id for s in others] == ["c1"]
    (row,) = usage_by_user(others, now=at(0), sums=sums)
    assert row.charges == Decimal("999999999999") * 8 * 24 * 365


def test_last_active_is_the_latest_end_or_now_while_running(ledger):
    assert ledger.last_active(at(0)) == {}
    run(ledger, "a1", "ada", 0, 50)
    run(ledger, "a2", "ada", 10, 30)
    run(ledger, "b1", "bob", 0, 500)
    start(ledger, "b2", "bob", 100)
    run(ledger, "c1", "cy", 0, 0)
    now = at(200)
    assert ledger.last_active(now) == {"ada": at(50), "bob": at(500), "cy": at(0)}
    ledger.close_session("b2", ended_at=at(150), reason="stopped")
    assert ledger.last_active(now)["bob"] == at(500)
    start(ledger, "c2", "cy", 190)
    assert ledger.last_active(now)["cy"] == now
    start(ledger, "d1", "Ünïcode user", 10)  # only running, no closed session yet
    assert ledger.last_active(now) == {
        "ada": at(50),
        "bob": at(500),
        "cy": now,
        "Ünïcode user": now,
    }


def test_upgrading_fills_in_the_sums_of_closed_sessions(make_ledger):
    ledger = make_ledger()
    with ledger.engine.begin() as connection:
        ledger_schema.upgrade(connection, "0003")
        sessions = sa.Table("sessions", sa.MetaData(), autoload_with=connection)
        assert "charge_units" not in sessions.c
        snapshot = USD.snapshot(H100, 2)
        # the 0003 columns as stored: SQLite keeps money as fixed-point text
        money = (lambda v: f"{Decimal(v):.6f}") if ledger.dialect == "sqlite" else Decimal
        rows = []
        for i in range(25_001):  # more than two batches of 10,000
            rows.append(
                dict(
                    container_id=f"c{i}",
                    username=f"user{i % 7}",
                    server="",
                    gpu_uuids="GPU-0,GPU-1",
                    gpu_count=2,
                    gpu_model=H100,
                    profile="gpu-2",
                    price_per_gpu_hour=money("2.49"),
                    cpu_price_per_hour=money("0.05"),
                    currency="USD",
                    billing_increment_s=1,
                    minimum_charge=money("0.10"),
                    started_at=_stored_time(ledger, T0),
                    ended_at=None if i == 0 else _stored_time(ledger, T0 + timedelta(seconds=i)),
                    end_reason=None if i == 0 else "stopped",
                    last_seen_at=_stored_time(ledger, T0),
                )
            )
        connection.execute(sa.insert(sessions), rows)
    ledger.upgrade()
    stored = stored_sums(ledger)
    assert stored["c0"] == (None, None)  # still running
    for i in (1, 10_000, 10_001, 25_000):
        end = T0 + timedelta(seconds=i)
        assert stored[f"c{i}"] == (
            pricing.gpu_microseconds(snapshot, T0, end),
            pricing.charge_units(snapshot, T0, end),
        )
    assert sum(1 for gpu_us, _ in stored.values() if gpu_us is None) == 1
    now = T0 + timedelta(days=1)
    sums, others = ledger.usage_sums()
    assert usage_by_user(others, now=now, sums=sums) == usage_by_user(ledger.sessions(), now=now)


def _stored_time(ledger, when):
    """`when` as the 0003 schema's column holds it (SQLite: naive UTC text)."""
    return when.replace(tzinfo=None) if ledger.dialect == "sqlite" else when


# --- one user's page -------------------------------------------------------------------


@pytest.mark.parametrize("since, until", [*RANGES, (at(7500), None), (at(8000), None)])
def test_history_is_the_sessions_with_a_part_in_the_range_newest_first(history, since, until):
    now = at(8000)
    for user in ("ada", "bob", "cy", "nobody"):
        every = [
            s for s in history.sessions(user=user) if clip(s, now=now, since=since, until=until)
        ][::-1]
        total, page = history.history(user=user, now=now, since=since, until=until, limit=100)
        assert (total, page) == (len(every), every)
        for offset in range(len(every) + 1):
            total, page = history.history(
                user=user, now=now, since=since, until=until, limit=2, offset=offset
            )
            assert total == len(every) and page == every[offset : offset + 2]


def test_running_sessions_are_in_the_history_only_until_now(history):
    ids = [s.container_id for s in history.history(user="cy", now=at(8000), limit=9)[1]]
    assert ids == ["c3", "c1", "c2"]
    # at 6000 s, c3 (starting at 7000 s) has not run yet; a range after now has nothing running
    assert [s.container_id for s in history.history(user="cy", now=at(6000), limit=9)[1]] == [
        "c1",
        "c2",
    ]
    assert history.history(user="cy", now=at(6000), since=at(6500), limit=9) == (0, [])


def test_utilization_of_several_sessions_merges_gpus_and_writers_per_minute(ledger):
    run(ledger, "c1", "ada", 0, 600)
    run(ledger, "c2", "ada", 0, 600, gpus=2)
    rows = [
        RollupRow(cid, f"GPU-{cid}-{g}", at(60 * m), writer, samples, 10.0 * g + m, 60, 1)
        for cid, gpus in (("c1", 1), ("c2", 2))
        for g in range(gpus)
        for m in range(3)
        for writer, samples in (("meter-a", 30), ("meter-b", 10))
    ]
    assert ledger.add_rollups(rows) == []
    both = ledger.utilization_of(["c2", "c1", "c9"])
    assert set(both) == {"c1", "c2", "c9"} and both["c9"] == []
    for cid in ("c1", "c2"):
        # the same numbers as the per-GPU rollups, added up per minute
        expected = {}
        for r in ledger.rollups(cid):
            samples, total = expected.get(r.minute, (0, 0.0))
            expected[r.minute] = (samples + r.samples, total + r.util_mean * r.samples)
        got = both[cid]
        assert [m.minute for m in got] == sorted(expected)
        for m in got:
            assert m.samples == expected[m.minute][0]
            assert m.util_sum == pytest.approx(expected[m.minute][1])
    assert [m.samples for m in both["c2"]] == [80, 80, 80]  # 2 GPUs x (30 + 10)
    assert [m.minute for m in both["c1"]] == [truncate_to_minute(at(60 * m)) for m in range(3)]
    assert ledger.utilization_of([]) == {}


def test_sqlite_plans_read_the_month_through_indexes_not_the_whole_table(tmp_path):
    """What keeps everyone's month fast on a big SQLite ledger (docs/benchmarks.md): no
    statement of usage_sums(since=) walks the sessions table; all time, the sum may."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'plans.sqlite'}")
    ledger.ensure_schema()
    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    sa.event.listen(ledger.engine, "before_cursor_execute", record)
    ledger.usage_sums(since=at(0))
    ledger.usage_sums(since=at(0), until=at(3600))
    ledger.usage_sums(user="ada")
    sa.event.remove(ledger.engine, "before_cursor_execute", record)
    assert len(statements) == 3 + 4 + 2
    with ledger.engine.connect() as connection:
        for statement, parameters in statements:
            plan = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            steps = [row[3] for row in plan]
            assert not any(step == "SCAN sessions" for step in steps), (statement, steps)
            assert any("INDEX" in step for step in steps), (statement, steps)
    ledger.close()
