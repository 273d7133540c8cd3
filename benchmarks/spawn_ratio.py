"""Start-to-ready: plain DockerSpawner against GPUDockerSpawner, interleaved; a crowd of starts.

Three real hubs with their proxies on the real Docker engine and the same
image: one with DockerSpawner (host networking), one with GPUDockerSpawner
(1 simulated GPU) on host networking too, and one with GPUDockerSpawner on the
notebooks' own network as shipped (a bridge, traffic between notebooks off).
Starts alternate between them, so all see the same machine load; the figures
are ratios of the medians: the GPU spawner against the plain one (both on the
host's network), and the notebooks' network against host networking. Then 50 users
ask one GPU hub with 8 GPUs for a GPU at the same moment: how long until
every request is answered, and that exactly 8 got disjoint GPUs. Usage, from
the repository root after scripts/setup:

    .venv/bin/python benchmarks/spawn_ratio.py [--rounds 7] [--concurrent 50]
"""

import argparse
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.hub import Hub  # noqa: E402  (the same harness as the end-to-end tests)

# DockerSpawner with host networking needs the same two adjustments the GPU
# spawner makes for it: no port bindings, and a free port on the host.
PLAIN_SPAWNER = """
import json, os
from dockerspawner import DockerSpawner
from jupyterhub.utils import random_port


class PlainHostDockerSpawner(DockerSpawner):
    async def start(self):
        self.port = random_port()
        return await super().start()

    async def get_ip_and_port(self):
        return "127.0.0.1", self.port


settings = json.loads(os.environ["JGM_TEST_SETTINGS"])
c = get_config()  # noqa
c.JupyterHub.spawner_class = PlainHostDockerSpawner
c.DockerSpawner.image = settings["image"]  # the same image as the GPU hub
c.DockerSpawner.pull_policy = "never"
c.DockerSpawner.name_template = settings["prefix"] + "{username}--{servername}"
c.DockerSpawner.network_name = "host"
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.ip = "127.0.0.1"
c.DockerSpawner.remove = True
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrent", type=int, default=50)
    args = parser.parse_args()
    client = docker.from_env()
    work = Path(tempfile.mkdtemp(prefix="jgm-spawn-ratio-"))
    plain_config = work / "plain.py"
    plain_config.write_text(PLAIN_SPAWNER)
    plain = Hub(work / "plain", client, "1", network="host")
    hub_config = plain.dir / "jupyterhub_config.py"
    # after the harness's own settings, so DockerSpawner replaces the GPU spawner
    hub_config.write_text(hub_config.read_text() + f"\nload_subconfig({str(plain_config)!r})\n")
    gpu = Hub(work / "gpu", client, "1", network="host")
    bridged = Hub(work / "bridged", client, "1")  # the notebooks' own network, as shipped
    times = {"DockerSpawner": [], "GPUDockerSpawner": [], "GPU, own network": []}
    try:
        for hub in (plain, gpu, bridged):
            hub.start()
        plain.time_to_ready("warmup", {})
        gpu.time_to_ready("warmup", {"gpus": 1})
        bridged.time_to_ready("warmup", {"gpus": 1})
        for _ in range(args.rounds):
            times["DockerSpawner"].append(plain.time_to_ready("bench", {}))
            times["GPUDockerSpawner"].append(gpu.time_to_ready("bench", {"gpus": 1}))
            times["GPU, own network"].append(bridged.time_to_ready("bench", {"gpus": 1}))
    finally:
        for hub in (plain, gpu, bridged):
            hub.cleanup()

    crowd = Hub(work / "crowd", client, "8")
    try:
        crowd.start()
        users = [f"user{i}" for i in range(args.concurrent)]
        started = time.perf_counter()
        responses = crowd.start_many([(user, {"gpus": 1}) for user in users])
        answered = time.perf_counter() - started
        held = crowd.gpus_held()
        all_uuids = list(itertools.chain.from_iterable(held.values()))
        codes = sorted(r.status_code for r in responses)
    finally:
        crowd.cleanup()

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores")
    for kind, values in times.items():
        print(
            f"{kind:17s} start-to-ready: median {statistics.median(values):.2f} s, "
            f"min {min(values):.2f} s, max {max(values):.2f} s ({len(values)} starts)"
        )
    ratio = statistics.median(times["GPUDockerSpawner"]) / statistics.median(times["DockerSpawner"])
    print(f"ratio GPUDockerSpawner / DockerSpawner (medians): {ratio:.3f} (goal <= 1.05)")
    network = statistics.median(times["GPU, own network"]) / statistics.median(
        times["GPUDockerSpawner"]
    )
    print(f"ratio notebooks' own network / host networking (medians): {network:.3f}")
    print(
        f"{args.concurrent} concurrent starts on 8 GPUs: all answered in {answered:.1f} s; "
        f"{codes.count(503)} refused (503), {len(held)} started holding {len(all_uuids)} GPUs, "
        f"{len(set(all_uuids))} distinct"
    )
    expected = min(8, args.concurrent)
    if not len(all_uuids) == len(set(all_uuids)) == len(held) == expected:
        raise SystemExit(f"expected {expected} servers on {expected} distinct GPUs: {held}")


if __name__ == "__main__":
    main()
