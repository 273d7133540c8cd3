"""The Swarm cluster on this machine, for the tests marked ``cluster``.

The session fixture ``swarm_cluster`` runs ``scripts/swarm-cluster up`` (idempotent:
a healthy cluster is kept as it is, so the fixture costs a few seconds when the
cluster is already up; a missing or broken one is made or repaired) and yields a
:class:`SwarmCluster`. The cluster is left up after the session on purpose: CI
machines keep it between runs, and the next ``up`` checks its health before
reusing it. ``scripts/swarm-cluster down --volumes`` removes everything.

``JGM_CLUSTER`` picks the cluster (default ``jgm-swarm``). Without Docker the
tests skip, unless ``JGM_REQUIRE_DOCKER=1`` (scripts/test), then they fail.
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import _unavailable

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "swarm-cluster"
# the notebook image every node has (scripts/build-images --slim; loaded by `up`)
SLIM_IMAGE = "jupyter-gpu-meter/notebook:slim"
GPU_KIND = "NVIDIA-GPU"


@dataclass(frozen=True)
class ClusterNode:
    name: str  # the engine's Name = the Swarm node's hostname
    address: str  # on the cluster network: engine API at tcp://<address>:2375
    gpus: tuple[str, ...]  # the UUIDs it advertises as NVIDIA-GPU generic resources
    model: str  # its label jupyter-gpu-meter.gpu-model ("" when it has no GPU)
    manager: bool


@dataclass
class SwarmCluster:
    prefix: str
    docker_host: str  # tcp://<manager>:2375
    gateway: str  # this host's address on the cluster network: what tasks can reach
    nodes: dict[str, ClusterNode]
    image: str = SLIM_IMAGE
    _clients: dict = field(default_factory=dict, repr=False)

    def client(self):
        """docker-py client of the manager (a node, never this host's engine)."""
        return self._client(self.docker_host)

    def node_client(self, name: str):
        """docker-py client of one node's own engine (its containers, its images)."""
        return self._client(f"tcp://{self.nodes[name].address}:2375")

    def _client(self, url):
        import docker

        if url not in self._clients:
            self._clients[url] = docker.DockerClient(base_url=url, timeout=60)
        return self._clients[url]

    def unique(self, what: str) -> str:
        """A name for a Docker object a test creates (services are removed by the test)."""
        return f"jgm-test-{what}-{uuid.uuid4().hex[:8]}"

    @contextlib.contextmanager
    def expose(self, port: int, host: str = "127.0.0.1"):
        """Make a server of this host that listens on `host`:`port` only (PostgreSQL
        from scripts/start-postgres listens on 127.0.0.1) reachable from the tasks:
        yields the (gateway, port) to give them; a TCP relay until the block ends."""
        relay = start_relay((self.gateway, 0), (host, port))
        try:
            yield self.gateway, relay.server_address[1]
        finally:
            relay.shutdown()
            relay.server_close()

    def close(self):
        for client in self._clients.values():
            client.close()


def start_relay(listen: tuple[str, int], target: tuple[str, int]) -> socketserver.TCPServer:
    """A TCP relay from `listen` to `target`, served by a daemon thread (``shutdown()`` ends it)."""
    relay = _RelayServer(listen, _Relay)
    relay.target = target
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    return relay


class _RelayServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    target: tuple[str, int]


class _Relay(socketserver.BaseRequestHandler):
    def handle(self):
        with socket.create_connection(self.server.target, timeout=10) as upstream:
            upstream.settimeout(None)
            back = threading.Thread(target=_pump, args=(upstream, self.request), daemon=True)
            back.start()
            _pump(self.request, upstream)
            back.join()


def _pump(source, sink):
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def run_script(*args: str, prefix: str) -> str:
    # node-config runs in this venv (the package of this checkout)
    env = {"JGM_VENV": sys.prefix, **os.environ, "JGM_CLUSTER": prefix}
    env.pop("DOCKER_HOST", None)  # the script drives this host's engine
    done = subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"scripts/swarm-cluster {' '.join(args)} failed ({done.returncode}):\n"
            f"{done.stderr}{done.stdout}"
        )
    return done.stdout


def parse_env(text: str) -> dict[str, str]:
    """`scripts/swarm-cluster env`'s KEY=VALUE lines as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def read_nodes(manager, addresses: dict[str, str]) -> dict[str, ClusterNode]:
    """The nodes as the manager describes them (generic resources, labels, role)."""
    nodes = {}
    for node in manager.nodes.list():
        attrs = node.attrs
        name = attrs["Description"]["Hostname"]
        resources = attrs["Description"].get("Resources", {}).get("GenericResources") or []
        gpus = tuple(
            sorted(
                r["NamedResourceSpec"]["Value"]
                for r in resources
                if r.get("NamedResourceSpec", {}).get("Kind") == GPU_KIND
            )
        )
        labels = attrs["Spec"].get("Labels") or {}
        nodes[name] = ClusterNode(
            name=name,
            address=addresses[name],
            gpus=gpus,
            model=labels.get("jupyter-gpu-meter.gpu-model", ""),
            manager=attrs["Spec"]["Role"] == "manager",
        )
    return dict(sorted(nodes.items()))


def open_cluster(prefix: str) -> SwarmCluster:
    """`scripts/swarm-cluster up` (keeps a healthy cluster), then the cluster as it is."""
    run_script("up", prefix=prefix)
    env = parse_env(run_script("env", prefix=prefix))
    addresses = dict(item.split("=", 1) for item in env["JGM_CLUSTER_NODES"].split(","))
    cluster = SwarmCluster(
        prefix=prefix, docker_host=env["DOCKER_HOST"], gateway=env["JGM_CLUSTER_GATEWAY"], nodes={}
    )
    cluster.nodes = read_nodes(cluster.client(), addresses)
    return cluster


@pytest.fixture(scope="session")
def swarm_cluster():
    import docker

    prefix = os.environ.get("JGM_CLUSTER", "jgm-swarm")
    try:
        docker.from_env().ping()
    except Exception as e:
        _unavailable(f"no Docker engine for the Swarm cluster: {e}")
    cluster = open_cluster(prefix)
    yield cluster
    cluster.close()


if __name__ == "__main__":
    # python -m tests.cluster relay LISTEN_HOST TARGET_HOST TARGET_PORT PORT_FILE
    # (scripts/try-howto-cluster: PostgreSQL of 127.0.0.1 for its servers' agents);
    # writes the port it listens on to PORT_FILE, relays until killed
    _, command, listen_host, target_host, target_port, port_file = sys.argv
    assert command == "relay", sys.argv
    server = start_relay((listen_host, 0), (target_host, int(target_port)))
    Path(port_file).write_text(f"{server.server_address[1]}\n")
    threading.Event().wait()
