"""The how-to "Run on several GPU servers" works from its own commands.

scripts/try-howto-cluster runs the page's command blocks (those marked
``% try-howto: NAME``) on two fresh Docker-in-Docker servers: node-config and
its merge into daemon.json and the runtime's config.toml, the TLS certificates
and the manager's TLS daemon.json, the TLS check from the hub, swarm init/join
and the node labels; then checks what the page's "Check it" says of the cluster
(two ready nodes with their GPUs and labels, the API refused without the hub's
client certificate, a 1-GPU A100 task on the A100 node seeing only its GPU) and
that GPUSwarmSpawner with the page's hub settings sees the cluster's four GPUs;
then the ledger's tables in PostgreSQL (step 4) and the page's agent service
line (step 5), each node's agent reporting its two GPUs to the ledger.
A page edit that breaks a step fails here.
"""

import os
import subprocess

import pytest

from tests.cluster import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.slow]


def test_the_how_to_brings_up_a_two_node_gpu_cluster(swarm_cluster, postgres_url):
    # (swarm_cluster: its `up` built the node image the servers are made from, and the
    # agent's image)
    env = {
        **os.environ,
        "JGM_HOWTO_CLUSTER": swarm_cluster.unique("howto"),
        "JGM_HOWTO_DB_URL": postgres_url,
    }
    done = subprocess.run(
        [str(REPO / "scripts" / "try-howto-cluster")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    said = [line for line in done.stderr.splitlines() if line.startswith("try-howto:")]
    assert done.returncode == 0, done.stdout + done.stderr
    assert said[-1] == (
        "try-howto: OK: the how-to's steps 1-5 made a two-node GPU cluster, "
        "its agents report to the ledger"
    )
    assert any("answers only with the hub's client certificate" in line for line in said)
    assert any("a 1-GPU A100 task ran on" in line for line in said)
    assert any("sees 4 GPUs" in line for line in said)
    for node, model in (("1", "NVIDIA H100 80GB HBM3"), ("2", "NVIDIA A100-SXM4-80GB")):
        assert any(
            line.startswith("try-howto: the agent on ") and f"-{node} reports 2 x {model}" in line
            for line in said
        ), said
