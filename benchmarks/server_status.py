"""What one ``api/server-status`` call costs the meter, against ``api/health`` in the same run.

JupyterLab's status bar calls ``api/server-status`` every few seconds for every
open notebook server, so its cost per call, times the calls per second, is the
load the status bar adds to the meter. Builds the ledger of
benchmarks/usage_pages.py (--users users with --sessions finished sessions
each, a running session for every tenth user), gives every running user a
money budget, puts their containers in the meter's state with a GPU sample and
idle GPUs (so every answer has a budget and an idle deadline), serves the real
web app in this process (the hub's token check answered locally) and calls, in
turn, --rounds times each: ``api/health`` (the baseline: no ledger, no work),
``api/server-status`` with the budget cached (``c.ServerStatus.budget_cache_seconds``
= 15, as shipped: what most calls cost), ``api/server-status`` reading the
budget every call (cache 0: the call after each cache period) and ``api/usage``
(for scale). Each call is for a user picked in turn among the running ones. The
figure is Tornado's own request time (the ledger read in the reader threads
included). Usage, from the repository root:

    .venv/bin/python benchmarks/server_status.py [--users 1000] [--sessions 10] [--rounds 500]
"""

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tornado.httpclient import AsyncHTTPClient  # noqa: E402
from tornado.httpserver import HTTPServer  # noqa: E402
from tornado.testing import bind_unused_port  # noqa: E402
from usage_pages import ACCESS, H100, PREFIX, LocalTokens, build_ledger, cpu_model  # noqa: E402

from jupyter_gpu_meter.ledger import Ledger  # noqa: E402
from jupyter_gpu_meter.pricing import Pricing  # noqa: E402
from jupyter_gpu_meter.sampler import GPUReading, Tick  # noqa: E402
from jupyter_gpu_meter.service import create_application  # noqa: E402
from jupyter_gpu_meter.service.policy_runner import Policies, PolicyRunner  # noqa: E402
from jupyter_gpu_meter.service.reader import LiveState  # noqa: E402
from jupyter_gpu_meter.service.server_status import ServerStatus, StatusSource  # noqa: E402
from jupyter_gpu_meter.service.state import MeterState  # noqa: E402
from jupyter_gpu_meter.sessions import ManagedContainer, Opening, SessionChanges  # noqa: E402

#: c.ServerStatus.budget_cache_seconds as shipped
CACHE = ServerStatus().budget_cache_seconds


def meter_of(url: str, now: datetime):
    """The meter's state as its loops fill it: the running containers, a sample, idle GPUs."""
    ledger = Ledger(url)
    pricing = Pricing(prices={H100: "2.49"})
    state = MeterState()
    openings = []
    for session in ledger.open_sessions():
        ledger.set_budget(
            scope="user", name=session.user, amount="100", unit="money", currency="USD",
            period="month", by="admin", at=now - timedelta(days=1),
        )  # fmt: skip
        container = ManagedContainer(
            session.container_id, session.user, "", session.gpu_uuids, H100, "gpu-1",
            session.price, True, session.started_at, None, None,
        )  # fmt: skip
        openings.append(Opening(container, session.started_at, session.price))
    state.apply(SessionChanges(opened=tuple(openings)))
    gpus = tuple(GPUReading(f"GPU-{i}", i, H100, 0, 1 << 30, 80 << 30) for i in range(8))
    runner = PolicyRunner(Policies(), state, None, None, None, lambda: now)
    runner.observe(Tick(now - timedelta(minutes=50), gpus, (), 0.001))
    state.sampled(Tick(now, gpus, (), 0.001))
    runner.observe(state.last_tick)
    meter = SimpleNamespace(ledger=ledger, pricing=pricing, state=state, health=state.health)
    return meter, runner, sorted({o.container.user for o in openings})


async def measure(url: str, rounds: int, now: datetime):
    meter, runner, users = meter_of(url, now)
    hub_auth = LocalTokens(
        api_token="x",
        oauth_client_id="service-gpu-meter",
        hub_prefix="/hub/",
        base_url=PREFIX,
        access_scopes={ACCESS},
    )
    times: dict[str, list[float]] = {}
    servers, bases = [], {}
    for name, cache in (("cached", CACHE), ("uncached", 0.0)):
        status = StatusSource(
            runner, meter.ledger, settings=ServerStatus(budget_cache_seconds=cache)
        )
        app = create_application(
            meter,
            PREFIX,
            hub_auth=hub_auth,
            clock=lambda: now,
            live=LiveState(meter.state, health=meter.health),
            status=status,
        )
        app.settings["log_function"] = lambda handler, name=name: times.setdefault(
            f"{name} {handler.request.path}", []
        ).append(handler.request.request_time())
        sock, port = bind_unused_port()
        servers.append(HTTPServer(app))
        servers[-1].add_sockets([sock])
        bases[name] = f"http://127.0.0.1:{port}{PREFIX}"
    client = AsyncHTTPClient()
    calls = [
        ("api/health", "cached", "api/health", f"cached {PREFIX}api/health"),
        (f"api/server-status, budget cached ({CACHE:.0f} s)", "cached", "api/server-status", None),
        ("api/server-status, budget read each call", "uncached", "api/server-status", None),
        ("api/usage", "cached", "api/usage", f"cached {PREFIX}api/usage"),
    ]
    answer = None
    for round_ in range(rounds + 5):  # the first 5: warm-up (connections, caches, JIT-free)
        if round_ == 5:
            times.clear()
        user = users[round_ % len(users)]
        for _, base, path, _ in calls:
            response = await client.fetch(
                bases[base] + path, headers={"Authorization": f"token {user}"}
            )
            assert response.code == 200
            if path == "api/server-status":
                answer = response.body
    for server in servers:
        server.stop()
    meter.ledger.close()
    results = []
    for name, base, path, key in calls:
        values = sorted(times[key or f"{base} {PREFIX}{path}"])
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        results.append((name, statistics.median(values) * 1000, p95 * 1000))
    return results, len(users), answer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=10, help="finished sessions per user")
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args()
    now = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/ledger.sqlite"
        started = time.perf_counter()
        sessions, _ = build_ledger(url, args.users, args.sessions, now)
        built = time.perf_counter() - started
        results, running, answer = asyncio.run(measure(url, args.rounds, now))
    print(f"ledger: {args.users} users, {sessions} sessions (built in {built:.0f} s)")
    print(f"{running} running servers, each user with a budget; a sample with idle GPUs")
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}")
    print(f"{args.rounds} rounds; server time per request (Tornado request_time):")
    print("| request | median | p95 | median / api/health |\n|---|---|---|---|")
    health = results[0][1]
    for name, median, p95 in results:
        print(f"| {name} | {median:.2f} ms | {p95:.2f} ms | {median / health:.1f} × |")
    cached, uncached = results[1][1], results[2][1]
    for period in (2, 5, 10):
        # one call per period; one in CACHE / period of them reads the budget
        per_call = cached + (uncached - cached) * min(period / CACHE, 1)
        load = per_call / 1000 / period * 100
        print(
            f"one notebook server polled every {period} s: {per_call:.2f} ms a call on average, "
            f"{load:.3f} % of one core"
        )
    print(f"an answer: {answer.decode()[:400]}…")


if __name__ == "__main__":
    main()
