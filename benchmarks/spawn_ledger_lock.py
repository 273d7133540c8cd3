"""20 concurrent starts while the ledger is locked for 10 s: do Docker calls wait for it?

The spawner reads each user's budget from the meter's ledger before a start.
Here the ledger (SQLite, a budget for every user so the spawner reads it) is
locked by another connection holding an exclusive write transaction for
``--lock`` seconds (``locking_mode=EXCLUSIVE``: WAL lets readers past an
ordinary writer; this lock, like a migration's, keeps them out). While it is
held, ``--concurrent`` users start a server at once and an admin stops one
that was running. A hub of this checkout and, with ``--old-ref``, a hub of
the code at that git revision (a temporary ``git worktree``, on PYTHONPATH)
run the same in turn, on the real Docker engine with simulated GPUs.

Each hub runs the spawner through a subclass that times every task on
DockerSpawner's shared executor (where its Docker calls run): how long each
waited in the queue before it ran, and how much of that wait it spent behind
a ledger read or a GPU discovery running there. Printed per hub: those waits,
the ledger and discovery tasks found on that executor, start-to-ready of the
starts, and how long the admin's stop took. Usage, from
the repository root after scripts/setup:

    .venv/bin/python benchmarks/spawn_ledger_lock.py [--concurrent 20] [--lock 10] \\
        [--old-ref ad6d58f]
"""

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from jupyter_gpu_meter.ledger import Ledger  # noqa: E402
from tests.hub import Hub  # noqa: E402  (the same harness as the end-to-end tests)

# Times every task on DockerSpawner's executor: the wait between submit and run.
TIMED_SPAWNER = """
import json, os, threading, time
from jupyter_gpu_meter.spawner import GPUDockerSpawner

_log_lock = threading.Lock()


def _record(entry):
    with _log_lock, open(os.environ["JGM_BENCH_LOG"], "a") as log:
        log.write(json.dumps(entry) + "\\n")


class _TimedExecutor:
    def __init__(self, inner):
        self.inner = inner

    def submit(self, fn, *args, **kwargs):
        submitted = time.monotonic()
        name = getattr(fn, "__name__", "?")
        task = args[0] if name == "_docker" else name

        def run():
            began = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                _record({"task": task, "docker": name != "_budget_status" and name != "discover",
                         "submitted": submitted, "began": began, "ended": time.monotonic()})

        return self.inner.submit(run)


class TimedSpawner(GPUDockerSpawner):
    @property
    def executor(self):
        return _TimedExecutor(super().executor)


c = get_config()  # noqa
c.JupyterHub.spawner_class = TimedSpawner
"""


def make_ledger(path: Path, users) -> str:
    url = f"sqlite:///{path}"
    with Ledger(url) as ledger:
        ledger.upgrade()
        for user in users:
            ledger.set_budget(
                scope="user", name=user, amount="1000", unit="money", period="month",
                currency="USD", by="bench", at=datetime.now(timezone.utc),
            )  # fmt: skip
    return url


def lock_ledger(path: Path, seconds: float, locked: threading.Event):
    """Hold an exclusive write transaction on the ledger for `seconds`."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA locking_mode=EXCLUSIVE")
    connection.execute("BEGIN EXCLUSIVE")
    connection.execute("UPDATE budgets SET amount = amount")
    locked.set()
    time.sleep(seconds)
    connection.execute("COMMIT")
    connection.close()


def run_hub(name, work, client, pythonpath, concurrent, lock_s):
    users = [f"user{i}" for i in range(concurrent)]
    log = work / f"{name}.jsonl"
    ledger_path = work / f"{name}-ledger.sqlite"
    hub = Hub(
        work / name,
        client,
        str(concurrent + 1),
        env={**os.environ, "PYTHONPATH": pythonpath, "JGM_BENCH_LOG": str(log)},
        **{
            "GPUDockerSpawner.ledger_url": f"sqlite:///{ledger_path}",
            # 20 notebooks starting at once on a few cores take minutes: let them
            "Spawner.start_timeout": 600,
            "Spawner.http_timeout": 600,
            # no homes: a new home's copy from the image would delay every start past the lock
            "HomeVolumes.enabled": False,
        },
    )
    timed = work / f"{name}-timed.py"
    timed.write_text(TIMED_SPAWNER)
    config = hub.dir / "jupyterhub_config.py"
    config.write_text(config.read_text() + f"\nload_subconfig({str(timed)!r})\n")
    try:
        hub.start()
        # a running server to stop later, started before the ledger exists (no budget read)
        assert hub.start_server("runner", {"gpus": 1}).status_code in (201, 202)
        make_ledger(ledger_path, users)
        log.write_text("")
        locked = threading.Event()
        locker = threading.Thread(target=lock_ledger, args=(ledger_path, lock_s, locked))
        locker.start()
        locked.wait()
        began = time.perf_counter()
        stop_took = []

        def stop_runner():
            time.sleep(1)  # the starts are under way
            started = time.perf_counter()
            hub.stop_server("runner")
            stop_took.append(time.perf_counter() - started)

        stopper = threading.Thread(target=stop_runner)
        stopper.start()
        ready = {}

        def start(user):
            response = hub.start_server(user, {"gpus": 1}, wait=False)
            ok = response.status_code in (201, 202) and hub.wait_for(user, timeout=600)
            ready[user] = time.perf_counter() - began if ok else None

        threads = [threading.Thread(target=start, args=(user,)) for user in users]
        for thread in threads:
            thread.start()
        for thread in threads + [stopper, locker]:
            thread.join()
        held = hub.gpus_held()
    finally:
        hub.cleanup()
    entries = [json.loads(line) for line in log.read_text().splitlines() if line]
    docker_calls = [e for e in entries if e["docker"]]
    meter = [e for e in entries if not e["docker"]]
    return {
        "docker_waits": [e["began"] - e["submitted"] for e in docker_calls],
        # how long each Docker call waited while a ledger or discovery task held the executor
        "waited_for_meter": [
            sum(
                max(0.0, min(e["began"], m["ended"]) - max(e["submitted"], m["began"]))
                for m in meter
            )
            for e in docker_calls
        ],
        "meter_runs": [m["ended"] - m["began"] for m in meter],
        "ready": ready,
        "stop": stop_took[0],
        "held": held,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--lock", type=float, default=10.0, help="seconds the ledger is locked")
    parser.add_argument("--old-ref", help="git revision of the code to compare with")
    args = parser.parse_args()
    client = docker.from_env()
    work = Path(tempfile.mkdtemp(prefix="jgm-ledger-lock-"))
    hubs = {}
    old = None
    if args.old_ref:
        old = work / "old-code"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.old_ref],
            check=True,
            capture_output=True,
        )
        hubs[f"before ({args.old_ref})"] = str(old)
    hubs["after (this checkout)"] = str(ROOT)
    results = {}
    try:
        for i, (name, path) in enumerate(hubs.items()):
            results[name] = run_hub(f"hub{i}", work, client, path, args.concurrent, args.lock)
    finally:
        if old is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)])

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores")
    print(f"{args.concurrent} concurrent 1-GPU starts, the ledger locked for {args.lock:.0f} s")
    for name, result in results.items():
        waits, for_meter = result["docker_waits"], result["waited_for_meter"]
        times = [t for t in result["ready"].values() if t is not None]
        runs = result["meter_runs"]
        print(
            f"{name}: {len(waits)} Docker calls waited in the queue median "
            f"{statistics.median(waits):.3f} s, max {max(waits):.2f} s; "
            f"{sum(1 for w in for_meter if w > 0)} of them behind a ledger or GPU-discovery "
            f"task, in all {sum(for_meter):.1f} s, at most {max(for_meter):.2f} s for one; "
            f"{len(runs)} such tasks on DockerSpawner's executor"
            + (f" (they held it {sum(runs):.1f} s, longest {max(runs):.2f} s)" if runs else "")
        )
        print(
            f"  started {len(times)} of {args.concurrent}"
            + (
                f", start-to-ready median {statistics.median(times):.1f} s, max {max(times):.1f} s"
                if times
                else ""
            )
            + f"; an admin's stop of a running server meanwhile took {result['stop']:.1f} s"
        )
        uuids = [uuid for held in result["held"].values() for uuid in held]
        if len(uuids) != len(set(uuids)):
            raise SystemExit(f"{name}: a GPU was given twice: {result['held']}")


if __name__ == "__main__":
    main()
