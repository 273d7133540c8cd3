"""The meter agents on every node of the 3-node test cluster, end to end.

A real hub on this host (GPUSwarmSpawner, the hub's meter in cluster mode on a
fresh PostgreSQL schema), the agents as a global Swarm service
(:mod:`tests.cluster_agents`, 1 s heartbeats) writing to that ledger. What is
checked is what an admin checks: the meter's ``api/usage``, ``api/gpus`` and
``api/nodes``, and the ledger; the reference is each node's own Docker (its
event stream: a Swarm service's container is removed with its service, so its
end comes from the node's ``die`` event, not from an inspect).

The lost-node test kills the A100 node's Docker-in-Docker container
(``docker kill <prefix>-2``) and starts it again, three times, and reports how
long the meter took to close the node's sessions and Swarm to mark it down. It
leaves the cluster healthy for the next test (its teardown waits for it).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from datetime import datetime

import pytest
import requests

from jupyter_gpu_meter.clock import parse_docker_time, utcnow
from jupyter_gpu_meter.cluster import assigned_uuids
from jupyter_gpu_meter.ledger import NODE_LOST, Ledger
from tests.cluster import SCRIPT
from tests.metering import DockerTimes, rollup_samples, wait_until
from tests.test_e2e_cluster import (
    A100,
    H100,
    SERVICE_LABEL,
    ClusterHub,
    node_of_model,
)

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

HEARTBEAT = 1.0  # seconds, the agents'
SWEEP = 0.5  # seconds, the hub's node sweep


class MeteredClusterHub(ClusterHub):
    """A ClusterHub whose meter runs in cluster mode over a PostgreSQL ledger the
    nodes' agents write (its hub id is what the agents meter)."""

    def __init__(self, tmp_path, cluster, ledger_url, **extra):
        super().__init__(
            tmp_path,
            cluster,
            **{"MeterService.cluster": True, "MeterService.node_sweep_interval": SWEEP, **extra},
        )
        self.hub_id = self.prefix.rstrip("-")
        self.settings["extra"]["HubIdentity.hub_id"] = self.hub_id
        self.settings["meter"] = True
        self.settings["ledger_url"] = ledger_url
        self.env["JGM_TEST_SETTINGS"] = json.dumps(self.settings)
        self._admin_token = None

    def start(self):
        super().start()
        wait_until(self.meter_health, timeout=60, what="the hub's meter")
        return self

    def meter_api(self, path: str, **params) -> dict:
        """The meter's API as the hub's admin sees it."""
        if self._admin_token is None:
            self._admin_token = self.user_token("admin")
        response = requests.get(
            self.meter_url + path,
            params=params,
            headers={"Authorization": f"token {self._admin_token}"},
            timeout=30,
        )
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def container_id(self, user: str) -> tuple[str, str]:
        """(node, container id) of `user`'s running server, from the node's own engine."""
        node = self.state(user)["node"]
        (container,) = self.cluster.node_client(node).containers.list(
            filters={"label": f"{SERVICE_LABEL}={self.prefix}{user}"}
        )
        return node, container.id


@pytest.fixture
def metered(tmp_path, swarm_cluster, postgres_url, cluster_agents, request):
    """(hub, agents): a metered cluster hub, started, and its agents on every node."""
    hubs = []

    def make(**extra):
        hub = MeteredClusterHub(
            tmp_path / f"cluster-hub{len(hubs)}", swarm_cluster, postgres_url, **extra
        )
        hubs.append(hub)
        with Ledger(postgres_url) as ledger:
            ledger.ensure_schema()  # the agents and the hub's meter meet in it
        agents = cluster_agents(hub.hub_id, postgres_url, heartbeat_interval=HEARTBEAT)
        return hub.start(), agents

    yield make
    failed = getattr(request.node, "rep_call", None)
    for hub in hubs:
        if failed is not None and failed.failed:
            print(hub.logs())
        hub.cleanup()


def ledger_session(hub, container_id):
    with Ledger(hub.ledger_url) as ledger:
        return ledger.get_session(container_id)


def ledger_count(hub) -> int:
    import sqlalchemy as sa

    with Ledger(hub.ledger_url) as ledger, ledger.engine.connect() as connection:
        return connection.execute(sa.text("SELECT count(*) FROM sessions")).scalar_one()


def within(a: datetime, b: datetime, seconds: float = 1.0) -> bool:
    return abs((a - b).total_seconds()) < seconds


def running_of(hub, user) -> list[dict]:
    """`user`'s running sessions in api/usage, once there are any (the hub's meter
    follows the ledger every node sweep)."""
    return wait_until(
        lambda: hub.meter_api("api/usage", user=user)["running"],
        timeout=30,
        what=f"{user}'s running session in api/usage",
    )


def start_on(hub, user, model) -> tuple[str, str]:
    """Start `user`'s 1-GPU server of `model`; (node, container id) once the ledger has it."""
    assert hub.start_server(user, {"gpus": 1, "gpu_model": model}).status_code in (201, 202)
    assert hub.server_model(user)["ready"]
    node, container_id = hub.container_id(user)
    wait_until(
        lambda: ledger_session(hub, container_id),
        timeout=30,
        what=f"{user}'s session in the ledger",
    )
    return node, container_id


def test_each_nodes_sessions_match_its_docker_runtimes(metered, swarm_cluster):
    h100, a100 = node_of_model(swarm_cluster, H100), node_of_model(swarm_cluster, A100)
    watchers = {node: DockerTimes(swarm_cluster.node_client(node)) for node in (h100, a100)}
    try:
        hub, _ = metered()
        where = {"ada": start_on(hub, "ada", H100), "bob": start_on(hub, "bob", A100)}
        assert {user: node for user, (node, _) in where.items()} == {"ada": h100, "bob": a100}
        for user, (node, container_id) in where.items():
            session = ledger_session(hub, container_id)
            assert session.node == node and session.running
            assert session.gpu_uuids == tuple(hub.state(user)["gpu_uuids"])
            inspected = swarm_cluster.node_client(node).api.inspect_container(container_id)
            docker_start = parse_docker_time(inspected["State"]["StartedAt"])
            assert within(session.started_at, docker_start), (session.started_at, docker_start)
            # what the admin sees: the running server with its node and GPU
            (running,) = running_of(hub, user)
            assert (running["node"], running["gpu_uuids"]) == (node, list(session.gpu_uuids))
        gpus = {gpu["uuid"]: gpu for gpu in hub.meter_api("api/gpus")["gpus"]}
        advertised = {uuid for node in swarm_cluster.nodes.values() for uuid in node.gpus}
        assert set(gpus) == advertised  # every node's GPUs, by the UUIDs Swarm schedules
        for user, (node, container_id) in where.items():
            (uuid,) = ledger_session(hub, container_id).gpu_uuids
            assert gpus[uuid]["node"] == node and gpus[uuid]["holder"]["user"] == user

        for user in where:
            hub.stop_server(user)
        for user, (node, container_id) in where.items():
            session = wait_until(
                lambda cid=container_id: (s := ledger_session(hub, cid)) and not s.running and s,
                timeout=30,
                what=f"{user}'s session to end",
            )
            times = wait_until(
                lambda node=node, cid=container_id: (
                    "die" in watchers[node].times.get(cid, {}) and watchers[node].times[cid]
                ),
                timeout=30,
                what=f"the die event of {user}'s container on {node}",
            )
            assert within(session.started_at, times["start"]), (session.started_at, times)
            assert within(session.ended_at, times["die"]), (session.ended_at, times)
            print(
                f"\n{user} on {node}: ledger - docker start "
                f"{(session.started_at - times['start']).total_seconds():+.3f} s, "
                f"end {(session.ended_at - times['die']).total_seconds():+.3f} s"
            )
            (item,) = hub.meter_api("api/usage", user=user)["sessions"]["items"]
            assert item["node"] == node and item["running"] is False
        assert ledger_count(hub) == 2
    finally:
        for watcher in watchers.values():
            watcher.close()


def test_metering_goes_on_while_the_hub_restarts(metered, swarm_cluster):
    hub, _ = metered()
    where = {"ada": start_on(hub, "ada", H100), "bob": start_on(hub, "bob", A100)}
    for _, container_id in where.values():
        wait_until(lambda cid=container_id: rollup_samples(hub, cid), timeout=60, what="rollups")
    hub.stop()  # the hub and its meter
    before = {user: rollup_samples(hub, cid) for user, (_, cid) in where.items()}
    for user, (_, container_id) in where.items():
        wait_until(
            lambda cid=container_id, n=before[user]: rollup_samples(hub, cid) > n,
            timeout=30,
            what=f"{user}'s rollups while the hub is down",
        )
    hub.start()
    for user, (node, container_id) in where.items():
        (running,) = running_of(hub, user)
        assert running["node"] == node and running["running"] is True
        usage = hub.meter_api("api/usage", user=user)
        assert usage["sessions"]["total"] == 1, usage["sessions"]
        assert ledger_session(hub, container_id).running
    assert ledger_count(hub) == 2  # one session per server, across the restart
    gpus = hub.meter_api("api/gpus")["gpus"]
    assert sorted(g["holder"]["user"] for g in gpus if g["holder"]) == ["ada", "bob"]


def swarm_state(swarm_cluster, node: str) -> str:
    return swarm_cluster.client().api.inspect_node(node)["Status"]["State"]


def wait_for_cluster_healthy(swarm_cluster, timeout: float = 180):
    """Until `scripts/swarm-cluster status` says healthy (a restarted node rejoined)."""

    def healthy():
        done = subprocess.run(
            [str(SCRIPT), "status"],
            env={**os.environ, "JGM_CLUSTER": swarm_cluster.prefix},
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.returncode == 0

    wait_until(healthy, timeout=timeout, what=f"cluster {swarm_cluster.prefix} healthy")


def test_a_killed_node_is_lost_at_its_last_heartbeat_and_reconciled_when_back(
    metered, swarm_cluster
):
    hub, agents = metered()
    a100 = node_of_model(swarm_cluster, A100)  # a worker: the manager stays
    a100_gpus = set(swarm_cluster.nodes[a100].gpus)
    address = swarm_cluster.nodes[a100].address
    closed_after, down_after = [], []
    try:
        ada = start_on(hub, "ada", H100)  # on the node that stays
        for run in range(3):
            user = f"bob{run}"
            node, container_id = start_on(hub, user, A100)
            assert node == a100
            killed_at = utcnow()
            subprocess.run(["docker", "kill", a100], check=True, capture_output=True, timeout=60)
            dead_at = utcnow()  # its agent's last heartbeat was taken before this
            session = wait_until(
                lambda cid=container_id: (s := ledger_session(hub, cid)) and not s.running and s,
                timeout=60,
                what=f"{user}'s session to end after the kill",
            )
            closed_after.append((utcnow() - killed_at).total_seconds())
            lost = agents.nodes()[a100]
            assert lost.lost and session.end_reason == NODE_LOST
            assert session.ended_at == lost.last_heartbeat_at <= dead_at
            # billed to its last heartbeat: at most about one interval short
            print(
                f"\nrun {run}: killed -> session closed {closed_after[-1]:.2f} s, "
                f"last heartbeat {(killed_at - lost.last_heartbeat_at).total_seconds():.2f} s "
                "before the kill"
            )
            # the admin sees it: the node lost, its GPUs no longer offered
            nodes = {n["name"]: n for n in hub.meter_api("api/nodes")["nodes"]}
            assert nodes[a100]["lost"] is True and nodes[a100]["gpus_free"] == 0
            gpus = {gpu["uuid"]: gpu for gpu in hub.meter_api("api/gpus")["gpus"]}
            for uuid in a100_gpus:  # listed, not offered: unhealthy, held by no one
                gpu = gpus[uuid]
                assert (gpu["healthy"], gpu["holder"]) == (False, None), gpu
                assert gpu["problem"].startswith(f"{NODE_LOST}: no heartbeat since"), gpu
            assert all(gpus[uuid]["healthy"] for uuid in swarm_cluster.nodes[ada[0]].gpus)
            usage = hub.meter_api("api/usage", user=user)
            gpu_hours_lost = usage["all_time"]["gpu_hours"]
            (item,) = usage["sessions"]["items"]
            assert item["end_reason"] == NODE_LOST
            wait_until(
                lambda: swarm_state(swarm_cluster, a100) == "down",
                timeout=120,
                what="Swarm to mark the node down",
            )
            down_after.append((utcnow() - killed_at).total_seconds())

            started_at = utcnow()
            subprocess.run(["docker", "start", a100], check=True, capture_output=True, timeout=60)
            agents.wait_for_heartbeats(started_at, timeout=180, names=[a100])
            assert not agents.nodes()[a100].lost
            assert swarm_cluster.nodes[a100].address == _address(a100, swarm_cluster.prefix)
            # reconciled from Docker's own times: one row, its node-lost end kept (the
            # container died with the node, before Docker could record it)
            wait_until(
                lambda: all(
                    gpu["healthy"]
                    for gpu in hub.meter_api("api/gpus")["gpus"]
                    if gpu["uuid"] in a100_gpus
                ),
                timeout=30,
                what="the node's GPUs offered again",
            )
            usage = hub.meter_api("api/usage", user=user)
            assert usage["sessions"]["total"] == 1
            assert usage["all_time"]["gpu_hours"] == gpu_hours_lost  # nothing counted twice
            again = ledger_session(hub, container_id)
            assert (again.ended_at, again.end_reason) == (session.ended_at, NODE_LOST)
            assert ledger_count(hub) == run + 2  # ada's and one per bob
            assert ledger_session(hub, ada[1]).running  # the other node never stopped
            # the admin stops the dead server (its service); its GPU is free again
            hub.stop_server(user)
            wait_until(
                lambda: not assigned_uuids(swarm_cluster.client().api.tasks()) & a100_gpus,
                timeout=120,
                what="no task holding an A100",
            )
            wait_for_cluster_healthy(swarm_cluster)
    finally:
        if (
            subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Running}}", a100],
                capture_output=True,
                text=True,
            ).stdout.strip()
            != "true"
        ):
            subprocess.run(["docker", "start", a100], capture_output=True, timeout=60)
        wait_for_cluster_healthy(swarm_cluster)
    assert address == _address(a100, swarm_cluster.prefix)
    print(
        "\ndocker kill -> sessions closed 'node lost': "
        f"median {statistics.median(closed_after):.2f} s "
        f"{[round(t, 2) for t in closed_after]} (heartbeat {HEARTBEAT} s, sweep {SWEEP} s); "
        f"Swarm marks the node down: median {statistics.median(down_after):.1f} s "
        f"{[round(t, 1) for t in down_after]}"
    )


def _address(node: str, network: str) -> str:
    return subprocess.run(
        [
            "docker",
            "inspect",
            "-f",
            f"{{{{(index .NetworkSettings.Networks {json.dumps(network)}).IPAddress}}}}",
            node,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
