"""A cluster of 100 nodes × 8 GPUs writing into one PostgreSQL: does ingest keep up, and
how long do the admin page and ``api/gpus`` take at that size against one host?

Simulated agents, no containers: one process writes, through the ledger calls
the agent makes (``Ledger.heartbeat``, ``open_session(node=)``,
``close_session``, ``touch_sessions``, ``add_rollups``, ``add_process_usage``),
what 100 agents write in ten minutes: every ``--flush`` seconds each node's
rollups of its held GPUs' current minute (cumulative, the previous minute once
more when a minute ends) and its sessions' process groups, every
``--heartbeat`` seconds its heartbeat, every ``--reconcile`` seconds its
touch of its running sessions; sessions (4, 2, 1 and 1 GPUs a node) end and
new ones start at random (30 minutes on average). Time is compressed: the
simulated clock (one clock, shared with the web app) runs ``--speed`` times
faster than the wall clock, and each flush step starts on schedule; a step
that ends after the next one was due is lag. ``--workers`` connections write
in parallel (the agents are 100 processes; here a pool stands in for them).

While it writes, and again when it is done, this process serves the real web
app (create_application, the hub's token check answered locally) twice on the
same ledger: as the hub's meter in cluster mode (GPUs from the ``nodes``
table, holders from open sessions, utilization from the latest rollups) and
as a one-host meter whose 8 GPUs come from its own last sample (the
baseline). The figure is Tornado's own request time. Usage, from the
repository root:

    .venv/bin/python benchmarks/cluster.py --postgresql-url postgresql+psycopg://...

It works in a schema of its own in that database, dropped at the end.
"""

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from jupyter_gpu_meter.ledger import Ledger, ProcessUsageRow, RollupRow  # noqa: E402
from jupyter_gpu_meter.pricing import Pricing  # noqa: E402

H100 = "NVIDIA H100 80GB HBM3"
PRICING = Pricing(prices={H100: "2.49"})
LAYOUT = (4, 2, 1, 1)  # GPUs of each node's sessions
USERS = 400
SESSION_MINUTES = 30
#: what is requested of each meter, by an admin
PATHS = ("admin", "api/gpus", "api/nodes", "metrics")


def node_name(n: int) -> str:
    return f"gpu-node-{n:03d}"


def node_gpus(n: int, count: int) -> list[dict]:
    name = node_name(n)
    return [
        {
            "uuid": "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}/{i}:{H100}")),
            "index": i,
            "model": H100,
            "memory_total_bytes": 80 << 30,
        }
        for i in range(count)
    ]


class Agent:
    """One node's agent as the ledger sees it: its sessions, and what it writes when."""

    def __init__(self, n: int, gpus: int, args, rng: random.Random):
        self.n, self.name, self.args, self.rng = n, node_name(n), args, rng
        self.gpus = node_gpus(n, gpus)
        self.writer = f"{self.name}-{1000 + n}-{rng.getrandbits(32):08x}"
        self.sessions = []  # (container id, uuids, started_at)
        self.counter = 0
        self.rows = 0  # rows written
        self.calls = 0  # ledger calls (transactions)

    def open(self, ledger, uuids, at):
        self.counter += 1
        container_id = f"{self.n:04d}{self.counter:06d}".ljust(64, "c")
        ledger.open_session(
            container_id=container_id,
            user=f"user{self.rng.randrange(USERS):03d}",
            server="",
            gpu_uuids=uuids,
            gpu_model=H100,
            profile=f"gpu-{len(uuids)}",
            price=PRICING.snapshot(H100, len(uuids)),
            started_at=at,
            node=self.name,
        )
        self.sessions.append((container_id, uuids, at))
        self.rows += 1
        self.calls += 1

    def start(self, ledger, at):
        self.beat(ledger, at)
        uuids = [gpu["uuid"] for gpu in self.gpus]
        i = 0
        for size in LAYOUT:
            self.open(ledger, uuids[i : i + size], at)
            i += size

    def beat(self, ledger, at):
        ledger.heartbeat(
            self.name,
            gpus=self.gpus,
            agent_version="bench",
            agent_started_at=self.args.t0,
            heartbeat_interval_s=self.args.heartbeat,
            at=at,
        )
        self.rows += 1
        self.calls += 1

    def step(self, ledger, at, step: int):
        """One flush interval ending at `at`: churn, rollups, process groups, and the
        heartbeat and the reconcile's touch when they are due."""
        args = self.args
        for session in list(self.sessions):  # sessions end at random, new ones start
            if self.rng.random() < args.flush / (SESSION_MINUTES * 60):
                container_id, uuids, _ = session
                ledger.close_session(container_id, ended_at=at, reason="stopped")
                self.sessions.remove(session)
                self.rows += 1
                self.calls += 1
                self.open(ledger, uuids, at)
        minute = at.replace(second=0, microsecond=0)
        minutes = [minute]
        if at - minute < timedelta(seconds=args.flush):
            minutes.insert(0, minute - timedelta(minutes=1))  # the last minute's final rows
        rollups = []
        for container_id, uuids, started in self.sessions:
            for m in minutes:
                begin = max(m, started)
                seconds = int(min((at - begin).total_seconds(), 60))
                if seconds <= 0:
                    continue
                for gpu in uuids:
                    util = self.rng.uniform(20, 95)
                    rollups.append(
                        RollupRow(
                            container_id, gpu, m, self.writer, seconds, util, int(util) + 3,
                            40 << 30, int(util * 10 * seconds), 300_000 * seconds,
                        )
                    )  # fmt: skip
        if rollups:
            ledger.add_rollups(rollups)
            self.rows += len(rollups)
            self.calls += 1
        groups = [
            ProcessUsageRow(
                container_id,
                "python",
                self.writer,
                int((at - started).total_seconds()),
                int((at - started).total_seconds()) * 1000 * len(uuids),
                500,
                30 << 30,
                started,
                at,
            )  # fmt: skip
            for container_id, uuids, started in self.sessions
            if at > started
        ]
        if groups:
            ledger.add_process_usage(groups)
            self.rows += len(groups)
            self.calls += 1
        if step % round(args.heartbeat / args.flush) == 0:
            self.beat(ledger, at)
        if step % round(args.reconcile / args.flush) == 0:
            ledger.touch_sessions([s[0] for s in self.sessions], at)
            self.rows += len(self.sessions)
            self.calls += 1


def ingest(url, args, clock, ready, results):
    """The agents' writes, paced by the compressed clock (in a process of its own)."""
    rng = random.Random(15)
    agents = [Agent(n, args.gpus, args, random.Random(rng.random())) for n in range(args.nodes)]
    ledgers = [Ledger(url) for _ in range(args.workers)]
    groups = [agents[w :: args.workers] for w in range(args.workers)]
    pool = ThreadPoolExecutor(args.workers)

    def run(step, at):
        list(
            pool.map(
                lambda w: [a.step(ledgers[w], at, step) for a in groups[w]], range(len(groups))
            )
        )

    clock.value = args.t0.timestamp()
    started = time.perf_counter()
    list(pool.map(lambda w: [a.start(ledgers[w], args.t0) for a in groups[w]], range(len(groups))))
    setup = time.perf_counter() - started
    setup_rows = sum(a.rows for a in agents)
    for agent in agents:
        agent.rows = agent.calls = 0
    ready.set()
    steps = int(args.minutes * 60 / args.flush)
    began = time.perf_counter()
    busy, lags, durations = 0.0, [], []
    for step in range(1, steps + 1):
        due = began + step * args.flush / args.speed
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        lags.append(max(0.0, time.perf_counter() - due))
        at = args.t0 + timedelta(seconds=step * args.flush)
        clock.value = at.timestamp()
        t = time.perf_counter()
        run(step, at)
        durations.append(time.perf_counter() - t)
        busy += durations[-1]
    wall = time.perf_counter() - began
    results.put(
        {
            "setup_s": setup,
            "setup_rows": setup_rows,
            "rows": sum(a.rows for a in agents),
            "calls": sum(a.calls for a in agents),
            "simulated_s": steps * args.flush,
            "wall_s": wall,
            "busy_s": busy,
            "max_lag_s": max(lags),
            "step_p50_s": statistics.median(durations),
            "step_max_s": max(durations),
        }
    )
    for ledger in ledgers:
        ledger.close()


async def serve(url, args, clock, ingesting):
    """Request the pages of a cluster meter and a one-host meter in turn, while the agents
    write and then quietly; Tornado's request time per (mode, request)."""
    from tornado.httpclient import AsyncHTTPClient
    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port
    from usage_pages import ACCESS, PREFIX, LocalTokens

    from jupyter_gpu_meter.sampler import GPUReading, Tick
    from jupyter_gpu_meter.service import create_application
    from jupyter_gpu_meter.service.reader import LiveState
    from jupyter_gpu_meter.service.state import MeterState
    from jupyter_gpu_meter.sessions import ManagedContainer, Opening, SessionChanges

    ledger = Ledger(url)
    statements = {"n": 0}

    @sa.event.listens_for(ledger.engine, "before_cursor_execute")
    def count(*_):
        statements["n"] += 1

    def now():
        return datetime.fromtimestamp(clock.value, timezone.utc)

    # one host: 8 GPUs in the meter's last sample, held by node 0's first sessions
    state = MeterState()
    gpus = node_gpus(0, args.gpus)
    readings = tuple(
        GPUReading(g["uuid"], g["index"], H100, 50, 40 << 30, 80 << 30, 300.0, 60) for g in gpus
    )
    state.sampled(Tick(now(), readings, (), 0.001))
    i = 0
    for n, size in enumerate(LAYOUT):
        uuids = tuple(g["uuid"] for g in gpus[i : i + size])
        i += size
        container = ManagedContainer(
            f"onehost{n}", f"user{n:03d}", "", uuids, H100, "", None, True, now(), None, None
        )
        state.apply(
            SessionChanges(opened=(Opening(container, now(), PRICING.snapshot(H100, size)),))
        )
    times: dict = {}
    servers, bases = [], {}
    for mode in ("cluster", "one host"):
        meter = SimpleNamespace(
            ledger=ledger, pricing=PRICING, health=lambda: {}, cluster=mode == "cluster"
        )
        hub_auth = LocalTokens(
            api_token="x", oauth_client_id="service-gpu-meter", hub_prefix="/hub/",
            base_url=PREFIX, access_scopes={ACCESS},
        )  # fmt: skip
        app = create_application(meter, PREFIX, hub_auth=hub_auth, clock=now, live=LiveState(state))

        def record(handler, mode=mode):
            key = (mode, handler.request.path.removeprefix(PREFIX) or "user page")
            times.setdefault(key, []).append(handler.request.request_time())

        app.settings["log_function"] = record
        sock, port = bind_unused_port()
        server = HTTPServer(app)
        server.add_sockets([sock])
        servers.append(server)
        bases[mode] = f"http://127.0.0.1:{port}{PREFIX}"
    client = AsyncHTTPClient()
    headers = {"Authorization": "token admin"}

    async def one_round(phase):
        for path in PATHS:
            for mode in ("cluster", "one host"):
                before = statements["n"]
                response = await client.fetch(bases[mode] + path, headers=headers)
                assert response.code == 200, (mode, path, response.code)
                key = (phase, mode, path)
                counted.setdefault(key, []).append(statements["n"] - before)
                sizes[(mode, path)] = len(response.body)

    counted, sizes = {}, {}
    await one_round("warm-up")
    times.clear()
    while ingesting():
        await one_round("loaded")
        await asyncio.sleep(0.5)
    loaded = {key: list(values) for key, values in times.items()}
    times.clear()
    for _ in range(args.rounds):
        await one_round("quiet")
    quiet = times
    for server in servers:
        server.stop()
    statements_per = {key[1:]: max(v) for key, v in counted.items() if key[0] == "quiet"}
    ledger.close()
    return loaded, quiet, statements_per, sizes


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def schema_url(base: str, schema: str) -> str:
    return (
        make_url(base)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgresql-url", default=os.environ.get("JGM_TEST_POSTGRES_URL"))
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    parser.add_argument("--minutes", type=float, default=10, help="simulated minutes")
    parser.add_argument("--speed", type=float, default=5, help="simulated seconds per second")
    parser.add_argument("--workers", type=int, default=8, help="connections writing at once")
    parser.add_argument("--flush", type=float, default=5.0, help="the agents' flush interval, s")
    parser.add_argument("--heartbeat", type=float, default=15.0)
    parser.add_argument("--reconcile", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=20, help="quiet rounds after the writes")
    args = parser.parse_args()
    if not args.postgresql_url:
        parser.error("give --postgresql-url (or JGM_TEST_POSTGRES_URL): scripts/start-postgres")
    args.t0 = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    schema = f"jgm_bench_cluster_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.postgresql_url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = schema_url(args.postgresql_url, schema)
    try:
        Ledger(url).upgrade()
        context = multiprocessing.get_context("spawn")
        clock, ready, results = context.Value("d", 0.0), context.Event(), context.Queue()
        writer = context.Process(target=ingest, args=(url, args, clock, ready, results))
        writer.start()
        ready.wait()
        loaded, quiet, statements, sizes = asyncio.run(serve(url, args, clock, writer.is_alive))
        found = results.get()
        writer.join()
        with admin.connect() as connection:
            counts = {
                table: connection.execute(
                    sa.text(f'SELECT count(*) FROM "{schema}".{table}')
                ).scalar()
                for table in ("nodes", "sessions", "rollups", "process_usage")
            }
            version = connection.execute(sa.text("SHOW server_version")).scalar()
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    report(args, found, loaded, quiet, statements, sizes, counts, version)


def report(args, found, loaded, quiet, statements, sizes, counts, version):
    from usage_pages import cpu_model

    print(f"machine: {os.cpu_count()} cores, {cpu_model()}; PostgreSQL {version}")
    tables = ", ".join(f"{n} {table}" for table, n in counts.items())
    print(
        f"cluster: {args.nodes} nodes × {args.gpus} GPUs, {args.minutes:g} simulated minutes "
        f"at {args.speed:g}× real time, {args.workers} writing connections; at the end: {tables}"
    )
    needed = found["rows"] / found["simulated_s"]
    written = found["rows"] / found["busy_s"]
    due = args.flush / args.speed * 1000
    rows = [
        ("rows written (rollups, process groups, sessions, heartbeats, touches)",
         f"{found['rows']:,} in {found['calls']:,} ledger calls"),
        ("rows/s needed in real time", f"{needed:,.0f}"),
        ("rows/s written while writing (rows ÷ the steps' time)",
         f"{written:,.0f} ({written / needed:.1f} × needed)"),
        ("one flush step of every node, median / max",
         f"{found['step_p50_s'] * 1000:.0f} / {found['step_max_s'] * 1000:.0f} ms "
         f"(due every {due:.0f} ms here, {args.flush:g} s in real time)"),
        ("behind schedule, at most", f"{found['max_lag_s'] * 1000:.0f} ms"),
        (f"wall time for {found['simulated_s']:.0f} simulated s", f"{found['wall_s']:.1f} s"),
    ]  # fmt: skip
    print(f"setup: {found['setup_rows']} rows in {found['setup_s']:.2f} s")
    print("| ingest | |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    for title, times in (
        ("while the agents write", loaded),
        (f"quiet, {args.rounds} rounds", quiet),
    ):
        print(f"\nserver time {title} (Tornado request_time), median / p95:")
        print("| request | cluster | one host | ratio | SQL statements | bytes |")
        print("|---|---|---|---|---|---|")
        for path in PATHS:
            c, o = times.get(("cluster", path), [0]), times.get(("one host", path), [0])
            cells = [
                f"{statistics.median(v) * 1000:.1f} / {percentile(v, 0.95) * 1000:.1f} ms"
                for v in (c, o)
            ]
            ratio = statistics.median(c) / statistics.median(o)
            count = [statements.get((mode, path), "?") for mode in ("cluster", "one host")]
            size = sizes.get(("cluster", path), 0)
            print(f"| {path} | {cells[0]} | {cells[1]} | {ratio:.1f} × | {count[0]} / {count[1]} "
                  f"| {size:,} |")  # fmt: skip


if __name__ == "__main__":
    main()
