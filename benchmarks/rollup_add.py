"""Cost of folding one tick into the rollups: ``RollupAggregator.add`` on the event loop.

Builds ticks by hand (no NVML): 1, 8 and 64 GPUs, each held by its own
metered container, with 0, 8 and 256 GPU processes of those containers
spread over them (five process names), every GPU with an energy counter;
with utilization only and with GPM's SM activity. Each round adds one tick a
second later than the previous one; medians and 99th percentiles of the
wall time of ``add`` over --rounds rounds, and the share of one core at one
tick per second. Usage, from the repository root:

    .venv/bin/python benchmarks/rollup_add.py [--rounds 3000]
"""

import argparse
import platform
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jupyter_gpu_meter.sampler import RollupAggregator  # noqa: E402
from jupyter_gpu_meter.sampler.readings import GPUReading, ProcessReading, Tick  # noqa: E402

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def measure(gpus: int, processes: int, sm_activity: float | None, rounds: int) -> list[float]:
    aggregator = RollupAggregator("bench", interval_s=1.0)
    containers = [f"{i:064x}" for i in range(gpus)]
    owners = {f"GPU-{i}": containers[i] for i in range(gpus)}
    managed = frozenset(containers)
    running = [
        ProcessReading(
            f"GPU-{i % gpus}", 1000 + i, containers[i % gpus], 1 << 30, 30, "container", f"p{i % 5}"
        )
        for i in range(processes)
    ]
    times = []
    for round_ in range(rounds):
        readings = tuple(
            GPUReading(
                f"GPU-{i}",
                i,
                "NVIDIA H100 80GB HBM3",
                50,
                1 << 30,
                80 << 30,
                energy_mj=round_ * 300_000,
                sm_activity=sm_activity,
            )
            for i in range(gpus)
        )
        tick = Tick(T0 + timedelta(seconds=round_), readings, tuple(running), 0.001)
        started = time.perf_counter()
        aggregator.add(tick, owners, managed)
        times.append(time.perf_counter() - started)
        if round_ % 60 == 59:  # as the meter's flush does, so rows do not pile up
            rows = aggregator.rows()
            aggregator.forget_before(rows[-1].minute)
            aggregator.process_rows()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3000)
    rounds = parser.parse_args().rounds
    print(f"Python {platform.python_version()}, {platform.machine()}, {rounds} rounds")
    print("| GPUs | processes | busy from | median | p99 | % of one core at 1 Hz |")
    print("|---|---|---|---|---|---|")
    for gpus in (1, 8, 64):
        for processes in (0, 8, 256):
            for sm_activity in (None, 40.0):
                times = sorted(measure(gpus, processes, sm_activity, rounds))
                median = statistics.median(times)
                p99 = times[int(len(times) * 0.99)]
                source = "utilization" if sm_activity is None else "SM activity"
                print(
                    f"| {gpus} | {processes} | {source} | {median * 1e3:.3f} ms "
                    f"| {p99 * 1e3:.3f} ms | {median * 100:.4f} % |"
                )


if __name__ == "__main__":
    main()
