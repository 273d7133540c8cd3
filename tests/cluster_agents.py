"""The meter agent on every node of the test cluster, as a global Swarm service.

:class:`ClusterAgents` runs ``jupyter-gpu-meter agent`` (the image of
``docker/agent/Dockerfile``, ``jupyter-gpu-meter/agent:test``, built and loaded
into every node by ``scripts/swarm-cluster up``) as the service
``<cluster prefix>-agent-<hub id>`` in global mode, the way the how-to "Run on
several GPU servers" creates it: non-root, with the node's Docker socket and
the node's ``/etc/jupyter-gpu-meter/agent_config.py`` (its simulated GPUs,
written by ``up``) bind-mounted, the socket's group added, the hub's id and
the ledger's URL in its environment. The ledger is the tests' PostgreSQL,
which listens on 127.0.0.1 only: the agents reach it through
``SwarmCluster.expose`` (a relay on the cluster network's gateway), so
:attr:`ClusterAgents.node_db_url` names the gateway.
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime

import pytest
from sqlalchemy.engine import make_url

from jupyter_gpu_meter.clock import utcnow
from jupyter_gpu_meter.identity import HUB_ID_ENV
from jupyter_gpu_meter.ledger import DB_URL_ENV, Ledger
from tests.metering import wait_until

AGENT_IMAGE = "jupyter-gpu-meter/agent:test"
#: written in every node by scripts/swarm-cluster up
AGENT_CONFIG = "/etc/jupyter-gpu-meter/agent_config.py"
DOCKER_SOCKET = "/var/run/docker.sock"


def socket_group(node: str) -> int:
    """The group id of the Docker socket in `node` (a container of this host's engine)."""
    done = subprocess.run(
        ["docker", "exec", node, "stat", "-c", "%g", DOCKER_SOCKET],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(done.stdout)


class ClusterAgents:
    """The agents of one hub on every node: start, wait for their heartbeats, remove."""

    def __init__(self, cluster, hub_id: str, db_url: str, heartbeat_interval: float = 1.0):
        self.cluster = cluster
        self.hub_id = hub_id
        self.db_url = db_url  # as this host reaches the ledger
        self.heartbeat_interval = heartbeat_interval
        self.name = f"{cluster.prefix}-agent-{hub_id}"
        self.service = None
        self.node_db_url = ""
        self._relay = None

    def start(self, timeout: float = 120) -> ClusterAgents:
        import docker

        url = make_url(self.db_url)
        self._relay = self.cluster.expose(url.port or 5432, url.host or "127.0.0.1")
        gateway, port = self._relay.__enter__()
        self.node_db_url = url.set(host=gateway, port=port).render_as_string(hide_password=False)
        manager = next(n.name for n in self.cluster.nodes.values() if n.manager)
        begun = utcnow()  # the nodes share this machine's clock
        self.service = self.cluster.client().services.create(
            AGENT_IMAGE,
            name=self.name,
            args=[
                "--config",
                AGENT_CONFIG,
                f"--heartbeat-interval={self.heartbeat_interval}",
                "--MeterAgent.flush_interval=1",
                "--log-level=INFO",
            ],
            mode=docker.types.ServiceMode("global"),
            mounts=[
                docker.types.Mount(DOCKER_SOCKET, DOCKER_SOCKET, type="bind", read_only=True),
                docker.types.Mount(AGENT_CONFIG, AGENT_CONFIG, type="bind", read_only=True),
            ],
            # non-root (the image's uid 1000) reads the socket through its group
            groups=[str(socket_group(manager))],
            env=[f"{HUB_ID_ENV}={self.hub_id}", f"{DB_URL_ENV}={self.node_db_url}"],
            restart_policy=docker.types.RestartPolicy(condition="any", delay=1_000_000_000),
            stop_grace_period=15_000_000_000,
        )
        self.wait_for_heartbeats(begun, timeout)
        return self

    def nodes(self) -> dict:
        """The ledger's node rows, by name."""
        with Ledger(self.db_url) as ledger:
            return {node.name: node for node in ledger.nodes()}

    def wait_for_heartbeats(self, since: datetime, timeout: float = 120, names=None) -> dict:
        """Until every node (or `names`) has an agent that started after `since` and beat."""
        names = set(names or self.cluster.nodes)

        def beating():
            nodes = self.nodes()
            ready = {
                name: nodes[name]
                for name in names
                if name in nodes and nodes[name].agent_started_at >= since and not nodes[name].lost
            }
            return ready if len(ready) == len(names) else None

        try:
            return wait_until(beating, timeout=timeout, what=f"heartbeats of {sorted(names)}")
        except AssertionError:
            print(self.logs())
            raise

    def logs(self) -> str:
        """The agents' logs on every node (for a failing test)."""
        if self.service is None:
            return ""
        out = []
        for name in self.cluster.nodes:
            try:
                client = self.cluster.node_client(name)
                for container in client.containers.list(
                    all=True, filters={"label": f"com.docker.swarm.service.name={self.name}"}
                ):
                    out.append(f"--- agent on {name} ({container.status})")
                    out.append(container.logs(tail=40).decode(errors="replace"))
            except Exception as e:  # a node that is down has no logs to give
                out.append(f"--- agent on {name}: {e}")
        return "\n".join(out)

    def stop(self, timeout: float = 60):
        """Remove the service and wait until no node runs its container; close the relay."""
        try:
            if self.service is not None:
                self.service.remove()
                deadline = time.monotonic() + timeout
                for name in self.cluster.nodes:
                    client = self.cluster.node_client(name)
                    label = f"com.docker.swarm.service.name={self.name}"
                    while client.containers.list(filters={"label": label}):
                        if time.monotonic() > deadline:
                            break
                        time.sleep(0.2)
        finally:
            if self._relay is not None:
                self._relay.__exit__(None, None, None)
                self._relay = None


@pytest.fixture
def cluster_agents(swarm_cluster, request):
    """start(hub_id, db_url): the agents of that hub on every node, removed after the test."""
    made = []

    def start(hub_id: str, db_url: str, **kwargs) -> ClusterAgents:
        agents = ClusterAgents(swarm_cluster, hub_id, db_url, **kwargs)
        made.append(agents)
        return agents.start()

    yield start
    failed = getattr(request.node, "rep_call", None)
    for agents in made:
        if failed is not None and failed.failed:
            print(agents.logs())
        agents.stop()
