"""One storage measuring pass over many homes: its time, and the event loop's worst delay.

Makes `--volumes` labelled home volumes (of a hub id of its own) holding
`--files` small files each, written by a few containers of the test image
that mount many volumes at once, then runs ``MeterService.storage_pass``
(Docker's df, the ledger's last ends, 1,000 periods written to a SQLite
ledger) in the meter's storage thread, `--rounds` times, each an hour later
by the pass's clock. Meanwhile a coroutine on the event loop sleeps 10 ms
again and again and records how late it wakes: the loop's worst response
time during a pass. Removes the volumes afterwards. Usage, from the
repository root after scripts/setup:

    .venv/bin/python benchmarks/storage_pass.py [--volumes 1000] [--files 100] [--rounds 5]
"""

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from traitlets.config import Config

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jupyter_gpu_meter.clock import utcnow  # noqa: E402
from jupyter_gpu_meter.homes import HOME, volume_labels  # noqa: E402
from jupyter_gpu_meter.service.app import MeterService  # noqa: E402
from tests.hub import IMAGE  # noqa: E402

#: volumes one filling container mounts
PER_CONTAINER = 100


def make_volumes(client, hub_id, count, files):
    names = [f"{hub_id}-home-{i:04d}" for i in range(count)]
    for i, name in enumerate(names):
        client.api.create_volume(
            name=name, labels=volume_labels(HOME, user=f"user{i:04d}", hub_id=hub_id)
        )
    script = (
        f"for d in /v/*; do i=0; while [ $i -lt {files} ]; do "
        'echo "file $i" > $d/f$i; i=$((i+1)); done; done'
    )
    for start in range(0, count, PER_CONTAINER):
        group = names[start : start + PER_CONTAINER]
        client.containers.run(
            IMAGE,
            ["sh", "-ec", script],
            user="0",
            entrypoint=[],
            network_mode="none",
            volumes={name: {"bind": f"/v/{name}", "mode": "rw"} for name in group},
            remove=True,
        )
    return names


async def idle_lateness(seconds=2.0):
    """The loop's worst lateness with nothing else running: the baseline."""
    late = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        late.append(time.perf_counter() - started - 0.01)
    return max(late)


async def probe(late: list, done: asyncio.Event):
    """Sleep 10 ms until `done`, recording how late each wake-up is."""
    while not done.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        late.append(time.perf_counter() - started - 0.01)


async def measure(meter, rounds):
    loop = asyncio.get_running_loop()
    print(f"idle event loop late by at most {await idle_lateness() * 1000:.1f} ms")
    passes, worst = [], []
    t0 = utcnow()
    for round_ in range(rounds):
        late, done = [], asyncio.Event()
        task = asyncio.ensure_future(probe(late, done))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        result = await loop.run_in_executor(
            meter.storage_executor, meter.storage_pass, t0 + timedelta(hours=round_)
        )
        passes.append(time.perf_counter() - started)
        done.set()
        await task
        worst.append(max(late))
        print(
            f"pass {round_ + 1}: {passes[-1]:.3f} s, {len(result.sizes)} volumes, "
            f"{result.periods} periods, loop late by at most {worst[-1] * 1000:.1f} ms "
            f"({len(late)} probes)"
        )
    return passes, worst


def df_alone(client, rounds=5):
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        client.api.df()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=1000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    client = docker.from_env()
    hub_id = "jgmbench-st-" + secrets.token_hex(3)
    names = []
    try:
        started = time.perf_counter()
        names = make_volumes(client, hub_id, args.volumes, args.files)
        print(
            f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; "
            f"Docker {client.version()['Version']}; made {len(names)} volumes of "
            f"{args.files} files in {time.perf_counter() - started:.0f} s"
        )
        print(f"df alone (median of 5): {df_alone(client):.3f} s")
        with tempfile.TemporaryDirectory() as tmp:
            config = Config(
                {"HubIdentity": {"hub_id": hub_id}, "Pricing": {"storage_price": "0.10"}}
            )
            meter = MeterService(db_url=f"sqlite:///{tmp}/ledger.sqlite", config=config)
            meter.writer_id = "bench"
            meter._setup(docker_api=client.api, hub_api=object())
            meter.ledger.ensure_schema()
            passes, worst = asyncio.run(measure(meter, args.rounds))
            meter.ledger.close()
        print(
            f"pass: median {statistics.median(passes):.3f} s, max {max(passes):.3f} s; "
            f"event loop late by at most {max(worst) * 1000:.1f} ms "
            f"(median of the rounds' worst {statistics.median(worst) * 1000:.1f} ms)"
        )
    finally:
        for name in names:
            try:
                client.api.remove_volume(name, force=True)
            except docker.errors.NotFound:
                pass
        print(f"removed {len(names)} volumes")


if __name__ == "__main__":
    main()
