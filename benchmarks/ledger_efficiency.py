"""Busy time and energy from the rollups at scale: the queries of issue #12, on a
ledger that benchmarks/ledger_scale.py filled and kept (``--keep``).

Measures, on each URL given:

1. ``Ledger.efficiency_of`` for the 25 newest sessions of a user (what a usage
   page shows), p50 / p95 over --samples users;
2. ``Ledger.efficiency_by_user(user=, since=<month>)``: one user's month, p50 / p95;
3. ``Ledger.efficiency_by_user(since=<month>)`` and for all time: everyone's, medians;

and prints each statement's plan (SQLite: EXPLAIN QUERY PLAN; PostgreSQL:
EXPLAIN ANALYZE). Usage, from the repository root:

    .venv/bin/python benchmarks/ledger_scale.py --db both --postgresql-url URL --keep ...
    .venv/bin/python benchmarks/ledger_efficiency.py sqlite:///PATH URL --fill-sums [--samples 200]

--fill-sums adds up the closed sessions' rollups into their rows first, as
migration 0006 does, and times it (ledger_scale.py's fill does it already).
"""

import argparse
import math
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import func, select, text, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ledger_scale import captured  # noqa: E402

from jupyter_gpu_meter import usage  # noqa: E402
from jupyter_gpu_meter.ledger import Ledger  # noqa: E402
from jupyter_gpu_meter.ledger.models import RollupModel, SessionModel  # noqa: E402

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def explain(ledger, statement, parameters):
    if ledger.dialect == "sqlite":
        connection = ledger.engine.raw_connection()
        try:
            rows = connection.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
        finally:
            connection.close()
        return [str(row[3]) for row in rows]
    connection = ledger.engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("EXPLAIN (ANALYZE) " + statement, parameters)
        return [row[0] for row in cursor.fetchall()]
    finally:
        connection.close()


def ms(seconds):
    return f"{seconds * 1e3:.1f} ms"


def fill_sums(ledger):
    """What migration 0006 does to closed sessions (ledger_scale.py fills the tables in
    bulk, past the ledger's writes): their rollups added up into their rows. Seconds."""
    sessions, rollups = SessionModel.__table__, RollupModel.__table__
    s, r = sessions.c, rollups.c
    sums = (
        select(
            r.session_id,
            func.sum(r.samples).label("samples"),
            func.sum(r.busy_ms).label("busy"),
            func.min(r.minute).label("first"),
            func.max(r.minute).label("last"),
        )
        .group_by(r.session_id)
        .subquery()
    )
    started = time.perf_counter()
    with ledger.engine.begin() as connection:
        connection.execute(
            update(sessions)
            .where(s.id == sums.c.session_id, s.ended_at.is_not(None))
            .values(
                rollup_samples=sums.c.samples,
                busy_ms=sums.c.busy,
                energy_units=0,
                rollups_from=sums.c.first,
                rollups_until=sums.c.last,
            )
        )
        connection.execute(
            update(sessions)
            .where(s.ended_at.is_not(None), s.rollup_samples.is_(None))
            .values(rollup_samples=0, busy_ms=0, energy_units=0)
        )
    if ledger.dialect == "postgresql":
        with ledger.engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("VACUUM (ANALYZE) sessions")
            )
    return time.perf_counter() - started


def measure(url, samples, rng, fill):
    ledger = Ledger(url)
    month = usage.month_start(NOW)
    try:
        if fill:
            print(f"filled in the closed sessions' sums in {fill_sums(ledger):.1f} s")
        with ledger.engine.connect() as connection:
            users = [
                row[0] for row in connection.execute(text("SELECT DISTINCT username FROM sessions"))
            ]
            rollups = connection.execute(text("SELECT count(*) FROM rollups")).scalar()
            sessions = connection.execute(text("SELECT count(*) FROM sessions")).scalar()
        picked = [rng.choice(users) for _ in range(samples)]
        newest = {}
        with ledger.engine.connect() as connection:
            for user in set(picked):
                newest[user] = [
                    row[0]
                    for row in connection.execute(
                        text(
                            "SELECT id FROM sessions WHERE username = :u "
                            "ORDER BY started_at DESC LIMIT 25"
                        ),
                        {"u": user},
                    )
                ]
        for user in picked[:10]:  # warm-up
            ledger.efficiency_of(newest[user])
            ledger.efficiency_by_user(user=user, since=month)
        of = [timed(ledger.efficiency_of, newest[user])[0] for user in picked]
        mine = [timed(ledger.efficiency_by_user, user=user, since=month)[0] for user in picked]
        everyone = [timed(ledger.efficiency_by_user, since=month)[0] for _ in range(3)]
        all_time = [timed(ledger.efficiency_by_user)[0] for _ in range(3)]
        print(f"\n## {ledger.url}: {sessions:,} sessions, {rollups:,} rollup rows")
        print("| figure | p50 | p95 |")
        print("|---|---|---|")
        for title, times in (
            ("efficiency_of(25 newest sessions of a user)", of),
            ("efficiency_by_user(user=, since=<month>)", mine),
        ):
            print(f"| {title} | {ms(statistics.median(times))} | {ms(percentile(times, 95))} |")
        print(
            f"| efficiency_by_user(since=<month>), everyone | {ms(statistics.median(everyone))} | |"
        )
        print(f"| efficiency_by_user(), everyone, all time | {ms(statistics.median(all_time))} | |")
        for title, call in (
            ("efficiency_of", lambda: ledger.efficiency_of(newest[picked[0]])),
            (
                "efficiency_by_user(user=, since=)",
                lambda: ledger.efficiency_by_user(user=picked[0], since=month),
            ),
            ("efficiency_by_user(since=)", lambda: ledger.efficiency_by_user(since=month)),
        ):
            with captured(ledger.engine) as statements:
                call()
            for statement, parameters in statements:
                print(f"\n{title}:\n    {statement[:300]}")
                for line in explain(ledger, statement, parameters):
                    print(f"      {line}")
    finally:
        ledger.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument(
        "--fill-sums", action="store_true", help="first add up the closed sessions' rollups"
    )
    args = parser.parse_args()
    rng = random.Random(42)
    for url in args.urls:
        measure(url, args.samples, rng, args.fill_sums)


if __name__ == "__main__":
    main()
