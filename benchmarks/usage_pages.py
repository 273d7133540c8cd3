"""Server time of the usage pages and API with a ledger of 1,000 users.

Builds a SQLite ledger (WAL, as the meter uses it) with --users users, each
with --sessions finished sessions over the last 60 days (1 or 2 GPUs, 30 to
90 minutes, a per-minute utilization rollup for each minute) and one running
session for every tenth user. Then serves the real web app
(create_application) in this process, with the hub's token check answered
locally, and requests each page and API call --rounds times in turn. The
figure is Tornado's own request time (first byte in to last byte out, the
ledger read in the reader threads included); the table shows median and
95th percentile. Usage, from the repository root:

    .venv/bin/python benchmarks/usage_pages.py [--users 1000] [--sessions 10] [--rounds 20]
"""

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jupyterhub.services.auth import HubOAuth  # noqa: E402
from tornado.httpclient import AsyncHTTPClient  # noqa: E402
from tornado.httpserver import HTTPServer  # noqa: E402
from tornado.testing import bind_unused_port  # noqa: E402

from jupyter_gpu_meter.ledger import Ledger, RollupRow  # noqa: E402
from jupyter_gpu_meter.pricing import Pricing  # noqa: E402
from jupyter_gpu_meter.service import create_application  # noqa: E402
from jupyter_gpu_meter.service.reader import LiveState  # noqa: E402
from jupyter_gpu_meter.service.state import MeterState  # noqa: E402

PREFIX = "/services/gpu-meter/"
ACCESS = "access:services!service=gpu-meter"
H100 = "NVIDIA H100 80GB HBM3"


class LocalTokens(HubOAuth):
    """The hub's answer to "whose token is this?", without a hub: token = user name."""

    def user_for_token(self, token, use_cache=True, session_id="", *, sync=True):
        model = {"kind": "user", "name": token, "admin": token == "admin", "scopes": [ACCESS]}
        if token == "admin":
            model["scopes"].append("read:metrics")

        async def answer():
            return model

        return model if sync else answer()


def build_ledger(url: str, users: int, sessions: int, now: datetime) -> tuple[int, int]:
    pricing = Pricing(prices={H100: "2.49"})
    rng = random.Random(42)
    ledger = Ledger(url)
    ledger.upgrade()
    count = rollups = 0
    for u in range(users):
        user = f"user{u:04d}"
        rows = []
        for s in range(sessions):
            gpus = rng.choice((1, 1, 2))
            start = now - timedelta(days=rng.uniform(0.2, 60))
            minutes = rng.randint(30, 90)
            container_id = f"{u:08x}{s:08x}".rjust(64, "0")
            ledger.open_session(
                container_id=container_id,
                user=user,
                server="",
                gpu_uuids=[f"GPU-{i}" for i in range(gpus)],
                gpu_model=H100,
                profile=f"gpu-{gpus}",
                price=pricing.snapshot(H100, gpus),
                started_at=start,
            )
            ledger.close_session(
                container_id, ended_at=start + timedelta(minutes=minutes), reason="stopped"
            )
            rows += [
                RollupRow(container_id, "GPU-0", start + timedelta(minutes=m), "b", 60, 50.0, 90, 0)
                for m in range(minutes)
            ]
            count += 1
        if u % 10 == 0:
            ledger.open_session(
                container_id=f"{u:08x}running".rjust(64, "0"),
                user=user,
                server="",
                gpu_uuids=["GPU-7"],
                gpu_model=H100,
                profile="gpu-1",
                price=pricing.snapshot(H100, 1),
                started_at=now - timedelta(hours=1),
            )
            count += 1
        ledger.add_rollups(rows)
        rollups += len(rows)
    ledger.close()
    return count, rollups


async def measure(url: str, rounds: int, now: datetime):
    ledger = Ledger(url)
    meter = SimpleNamespace(
        ledger=ledger,
        pricing=Pricing(prices={H100: "2.49"}),
        health=lambda: {},
    )
    hub_auth = LocalTokens(
        api_token="x",
        oauth_client_id="service-gpu-meter",
        hub_prefix="/hub/",
        base_url=PREFIX,
        access_scopes={ACCESS},
    )
    live = LiveState(MeterState(), health=meter.health)
    app = create_application(meter, PREFIX, hub_auth=hub_auth, clock=lambda: now, live=live)
    times: dict[str, list[float]] = {}

    def record(handler):
        times.setdefault(handler.request.path + "?" + handler.request.query, []).append(
            handler.request.request_time()
        )

    app.settings["log_function"] = record
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    client = AsyncHTTPClient()
    base = f"http://127.0.0.1:{port}{PREFIX}"
    requests = [
        ("user page", "", "user0010"),
        ("admin page (this month)", "admin", "admin"),
        ("admin page (all time)", "admin?since=&until=", "admin"),
        ("api/usage", "api/usage", "user0010"),
        ("api/users (all time, 100)", "api/users", "admin"),
        (
            "api/export.csv (this month, all users)",
            "api/export.csv?since=" + now.strftime("%Y-%m-01"),
            "admin",
        ),
        ("metrics", "metrics", "admin"),
    ]
    for _ in range(2):  # warm up: templates compiled, connections pooled
        for _, path, token in requests:
            await client.fetch(base + path, headers={"Authorization": f"token {token}"})
    times.clear()
    lines = None
    for _ in range(rounds):
        for _, path, token in requests:
            response = await client.fetch(base + path, headers={"Authorization": f"token {token}"})
            assert response.code == 200
            if path.startswith("api/export.csv"):
                lines = int(response.headers["X-Total-Count"])
    server.stop()
    ledger.close()
    results = []
    for name, path, _ in requests:
        key = PREFIX + path.partition("?")[0] + "?" + path.partition("?")[2]
        values = sorted(times[key])
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        results.append((name, statistics.median(values) * 1000, p95 * 1000))
    return results, lines


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=10, help="finished sessions per user")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    now = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/ledger.sqlite"
        started = time.perf_counter()
        sessions, rollups = build_ledger(url, args.users, args.sessions, now)
        built = time.perf_counter() - started
        size = os.path.getsize(f"{folder}/ledger.sqlite") / 1024**2
        results, lines = asyncio.run(measure(url, args.rounds, now))
    print(
        f"ledger: {args.users} users, {sessions} sessions, {rollups} rollup rows, "
        f"{size:.0f} MiB SQLite (built in {built:.0f} s)"
    )
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}")
    print(f"{args.rounds} rounds; server time per request (Tornado request_time):")
    print("| request | median | p95 |\n|---|---|---|")
    for name, median, p95 in results:
        print(f"| {name} | {median:.0f} ms | {p95:.0f} ms |")
    print(f"the export (this month, all users) has {lines} lines")


if __name__ == "__main__":
    main()
