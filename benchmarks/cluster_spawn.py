"""Start-to-ready on the Swarm cluster against one host, the same image, interleaved.

Two real hubs with their proxies on this machine: one whose GPUSwarmSpawner
places servers on the 3-node cluster of scripts/swarm-cluster (brought up or
checked first), one whose GPUDockerSpawner starts them on this machine's
Docker engine; both start the cluster's slim notebook image with 1 simulated
GPU, homes off (the cluster has none). Starts alternate between them, so both
see the same machine load; the figure is the ratio of the medians (issue #15
asks for the cluster's spawn time against one host, median of several, same
run). Usage, from the repository root after scripts/setup:

    .venv/bin/python benchmarks/cluster_spawn.py [--rounds 5]
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
from tests.cluster import open_cluster  # noqa: E402  (the end-to-end tests' cluster and hubs)
from tests.hub import Hub  # noqa: E402
from tests.test_e2e_cluster import ClusterHub  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="starts on each (default 5)")
    args = parser.parse_args()

    cluster = open_cluster(os.environ.get("JGM_CLUSTER", "jgm-swarm"))
    work = Path(tempfile.mkdtemp(prefix="jgm-bench-cluster-spawn-"))
    on_cluster = ClusterHub(work / "cluster", cluster)
    one_host = Hub(
        work / "one-host",
        docker.from_env(),
        "2",
        **{"GPUDockerSpawner.image": cluster.image, "HomeVolumes.enabled": False},
    )
    times = {"cluster": [], "one host": []}
    try:
        on_cluster.start()
        one_host.start()
        # one start each first: the images' first run on each engine is not what we ask
        on_cluster.time_to_ready("warmup", {"gpus": 1})
        one_host.time_to_ready("warmup", {"gpus": 1})
        for i in range(args.rounds):
            times["cluster"].append(on_cluster.time_to_ready(f"c{i}", {"gpus": 1}))
            times["one host"].append(one_host.time_to_ready(f"h{i}", {"gpus": 1}))
    finally:
        on_cluster.cleanup()
        one_host.cleanup()
        cluster.close()

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores")
    medians = {where: statistics.median(values) for where, values in times.items()}
    for where, values in times.items():
        spread = ", ".join(f"{value:.2f}" for value in values)
        print(f"{where}: median {medians[where]:.2f} s of {len(values)} ({spread})")
    print(f"ratio cluster / one host (medians): {medians['cluster'] / medians['one host']:.3f}")


if __name__ == "__main__":
    main()
