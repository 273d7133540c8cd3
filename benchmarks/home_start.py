"""What a persistent home costs a start: first start (the home is made), later starts, no homes.

Two real hubs on this machine's Docker engine (as in the end-to-end tests, one
simulated GPU): one with homes (the default), one with ``HomeVolumes.enabled =
False``. Each round starts a CPU-only server for a new user (whose home is made
and filled from the image), starts it again (the home exists), and starts one
on the hub without homes; start-to-ready times, medians and their ratios.

    python benchmarks/home_start.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hub import Hub  # noqa: E402

_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+")


def spawner_times(log: str) -> dict[str, list[float]]:
    """From a hub's log: milliseconds from each start's request to "Starting container"
    (the spawner's own work: home, checks, GPUs), by whether the home was made then."""
    times = {"home made": [], "home kept or none": []}
    began, made = {}, set()
    for line in log.splitlines():
        stamp = _TIME.search(line)
        if not stamp:
            continue
        at = datetime.strptime(stamp.group(0), "%Y-%m-%d %H:%M:%S.%f")
        if found := re.search(r"Creating oauth client jupyterhub-user-(\S+)$", line):
            began[found.group(1)] = at
        elif found := re.search(r"Made the home volume \S+ of (\S+)$", line):
            made.add(found.group(1))
        elif found := re.search(r"Starting container \S+?-(\w+)-- ", line):
            user = found.group(1)
            if user in began:
                kind = "home made" if user in made else "home kept or none"
                times[kind].append((at - began.pop(user)).total_seconds() * 1000)
                made.discard(user)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    client = docker.from_env()
    work = Path(tempfile.mkdtemp(prefix="jgm-home-start-"))
    homes = Hub(work / "homes", client, "1")
    none = Hub(work / "none", client, "1", **{"HomeVolumes.enabled": False})
    times = {"first start (home made)": [], "later start (home kept)": [], "no homes": []}
    logs = {}
    try:
        for hub in (homes, none):
            hub.start()
        homes.time_to_ready("warmup", {"gpus": 0})
        none.time_to_ready("warmup", {"gpus": 0})
        for round_ in range(args.rounds):
            user = f"bench{round_}"
            times["first start (home made)"].append(homes.time_to_ready(user, {"gpus": 0}))
            times["later start (home kept)"].append(homes.time_to_ready(user, {"gpus": 0}))
            times["no homes"].append(none.time_to_ready(user, {"gpus": 0}))
    finally:
        for hub in (homes, none):
            hub.cleanup()
            logs[hub] = hub.logs()

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores")
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    for kind, values in times.items():
        print(
            f"{kind:25s} start-to-ready: median {medians[kind]:.2f} s, "
            f"min {min(values):.2f} s, max {max(values):.2f} s ({len(values)} starts)"
        )
    # the totals above are mostly the notebook's own boot and the hub's readiness polling
    for label, hub in (("homes", homes), ("no homes", none)):
        for kind, values in spawner_times(logs[hub]).items():
            if values:
                print(
                    f"spawner's own time, {label}, {kind}: median "
                    f"{statistics.median(values):.0f} ms ({len(values)} starts)"
                )
    base = medians["no homes"]
    for kind, short in (("first start (home made)", "first"), ("later start (home kept)", "later")):
        print(f"ratio {short} start / no homes (medians): {medians[kind] / base:.3f}")


if __name__ == "__main__":
    main()
