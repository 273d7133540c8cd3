"""Start-to-ready time of a server, 1 GPU against CPU only, interleaved in one run.

Runs a real hub with its proxy and the real Docker engine, configured by the
shipped jupyterhub_config.py (its profiles, simulated GPUs), as the end-to-end
tests do, and times POST /users/:name/server with the "gpu-1" and "cpu"
profiles until the hub reports the server ready. Usage, from the repository
root after scripts/setup:

    .venv/bin/python benchmarks/spawn_time.py [--rounds 7]
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.hub import Hub  # noqa: E402  (the same harness as the end-to-end tests)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    shipped = Path(__file__).resolve().parent.parent / "jupyterhub_config.py"
    hub = Hub(
        Path(tempfile.mkdtemp(prefix="jgm-bench-")),
        docker.from_env(),
        "2xNVIDIA H100 80GB HBM3",
        base_config=str(shipped),
    ).start()
    try:
        hub.time_to_ready("warmup", {"profile": "gpu-1"})
        times = {"1 GPU": [], "CPU only": []}
        for _ in range(args.rounds):
            times["1 GPU"].append(hub.time_to_ready("bench", {"profile": "gpu-1"}))
            times["CPU only"].append(hub.time_to_ready("bench", {"profile": "cpu"}))
    finally:
        hub.cleanup()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores")
    for kind, values in times.items():
        print(
            f"{kind:9s} start-to-ready: median {statistics.median(values):.2f} s, "
            f"min {min(values):.2f} s, max {max(values):.2f} s ({len(values)} starts)"
        )
    ratio = statistics.median(times["1 GPU"]) / statistics.median(times["CPU only"])
    print(f"ratio 1 GPU / CPU only (medians): {ratio:.3f}")


if __name__ == "__main__":
    main()
