"""Snapshot and restore times of a 1 GiB home, against a bare ``cp -a`` of the same files.

A home volume on the real Docker engine gets 1 GiB of random data: one
512 MiB file and 4,096 files of 128 KiB in 64 folders. Then, `--rounds`
times: a bare ``cp -a`` of the home into a fresh volume by a helper container
(the floor: the same container start and the same copy), a snapshot
(:func:`~jupyter_gpu_meter.snapshots.take_snapshot`), and a restore of it
into the home (:func:`~jupyter_gpu_meter.snapshots.restore_snapshot`: copy
into the home, compare, commit, swap, remove the old files). Medians.
Usage, from the repository root after scripts/setup:

    .venv/bin/python benchmarks/snapshot_time.py [--rounds 3] [--mib 1024]
"""

import argparse
import os
import platform
import secrets
import statistics
import sys
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jupyter_gpu_meter import homes, snapshots  # noqa: E402
from tests.hub import IMAGE  # noqa: E402

HUB = "hub-bench"


def fill(api, home: str, mib: int) -> None:
    big, small = mib // 2, mib - mib // 2
    files = small * 8  # 128 KiB each
    homes.run_helper(
        api,
        image=IMAGE,
        purpose="fill",
        volume=home,
        script=f"""
cd /home-volume
head -c {big}M /dev/urandom > big.bin
i=0
while [ $i -lt {files} ]; do
  d=dir$((i % 64)); mkdir -p $d
  head -c 128K /dev/urandom > $d/file$i.bin
  i=$((i + 1))
done
chown -R 1000:100 .
""",
        mounts={home: "/home-volume"},
        timeout=3600,
    )


def bare_copy(api, home: str, target: str) -> float:
    api.create_volume(name=target)
    start = time.perf_counter()
    homes.run_helper(
        api,
        image=IMAGE,
        purpose="bare",
        volume=home,
        script="cp -a /home-volume/. /target/",
        mounts={home: "/home-volume:ro", target: "/target"},
        cap_add=snapshots.COPY_CAPS,
        timeout=3600,
    )
    elapsed = time.perf_counter() - start
    api.remove_volume(target)
    return elapsed


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mib", type=int, default=1024, help="size of the home in MiB")
    args = parser.parse_args()
    api = docker.from_env().api
    prefix = f"jgm-bench-{secrets.token_hex(3)}"
    home = f"{prefix}-home-ada"
    api.create_volume(name=home, labels=homes.volume_labels(homes.HOME, user="ada", hub_id=HUB))
    times = {"bare": [], "take": [], "restore": []}
    try:
        start = time.perf_counter()
        fill(api, home, args.mib)
        print(f"filled {args.mib} MiB in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        for round_ in range(args.rounds):
            times["bare"].append(bare_copy(api, home, f"{prefix}-bare{round_}"))
            start = time.perf_counter()
            snapshot = snapshots.take_snapshot(
                api, home, user="ada", hub_id=HUB, helper_image=IMAGE
            )
            times["take"].append(time.perf_counter() - start)
            start = time.perf_counter()
            snapshots.restore_snapshot(
                api, snapshot, home, user="ada", hub_id=HUB, helper_image=IMAGE
            )
            times["restore"].append(time.perf_counter() - start)
            snapshots.delete_snapshot(api, snapshot)
            print(
                f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                file=sys.stderr,
            )
    finally:
        for volume in api.volumes().get("Volumes") or []:
            if volume["Name"].startswith(prefix):
                api.remove_volume(volume["Name"], force=True)
    info = api.info()
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, {cpu_model()}; "
        f"Docker {info.get('ServerVersion')}, storage {info.get('Driver')}, "
        f"volumes on the engine's disk (local driver); {args.mib} MiB home "
        f"(1 file of {args.mib // 2} MiB, {(args.mib - args.mib // 2) * 8} of 128 KiB); "
        f"medians of {args.rounds}"
    )
    print()
    print("| operation | median | all rounds | MiB/s |")
    print("|---|---|---|---|")
    labels = {
        "bare": "bare `cp -a` in a helper (floor)",
        "take": "take a snapshot",
        "restore": "restore it (copy, compare, commit, swap, clean up)",
    }
    for key, label in labels.items():
        median = statistics.median(times[key])
        rounds = ", ".join(f"{t:.2f}" for t in times[key])
        print(f"| {label} | {median:.2f} s | {rounds} | {args.mib / median:.0f} |")


if __name__ == "__main__":
    main()
