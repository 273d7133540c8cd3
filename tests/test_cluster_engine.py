"""The Swarm cluster on this machine (scripts/swarm-cluster) does what the cluster
tests build on: three Docker-in-Docker nodes in one swarm whose manager is a node,
simulated GPUs scheduled exclusively as generic resources, the stand-in runtime
turning the assigned GPU into NVIDIA_VISIBLE_DEVICES, and the networking contract
(this host reaches a task's published port on any node; a task reaches this host
at the cluster network's gateway and nothing else)."""

import http.server
import os
import subprocess
import threading
import urllib.request

import pytest

import docker
from jupyter_gpu_meter import gpus as gpus_module
from tests.cluster import REPO
from tests.metering import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
RUNNING = {"running"}


def simulated_uuids(node, count, model):
    """GPUInventory.simulated_host's UUIDs for `node` (host = the node's name)."""
    return tuple(sorted(gpus_module.simulated_uuid(index, model, node) for index in range(count)))


@pytest.fixture
def services(swarm_cluster):
    """create(**kwargs) -> a service on the cluster's manager, removed after the test."""
    made = []

    def create(command, **kwargs):
        service = swarm_cluster.client().services.create(
            swarm_cluster.image,
            command=command,
            name=swarm_cluster.unique("svc"),
            labels={"jupyter-gpu-meter.test": "cluster-engine"},
            **kwargs,
        )
        made.append(service)
        return service

    yield create
    for service in made:
        service.remove()


def tasks_in(service, states):
    tasks = service.tasks()
    return [t for t in tasks if t["Status"]["State"] in states] or None


def assigned_gpus(task):
    # swarmkit's AssignedGenericResources: the Engine API names it GenericResources
    return [
        r["NamedResourceSpec"]["Value"]
        for r in task.get("GenericResources") or []
        if r.get("NamedResourceSpec", {}).get("Kind") == "NVIDIA-GPU"
    ]


def process_env(swarm_cluster, task):
    """The env of the task container's first process, as the runtime left it
    (names with a hyphen included: read from /proc/1/environ, not a shell)."""
    node = node_name(swarm_cluster, task)
    container_id = task["Status"]["ContainerStatus"]["ContainerID"]
    container = swarm_cluster.node_client(node).containers.get(container_id)
    code, out = container.exec_run(["cat", "/proc/1/environ"])
    assert code == 0, out
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def node_name(swarm_cluster, task):
    return swarm_cluster.client().nodes.get(task["NodeID"]).attrs["Description"]["Hostname"]


def gpu_resources(count):
    return docker.types.Resources(generic_resources={"NVIDIA-GPU": count})


def test_three_nodes_in_one_swarm_whose_manager_is_a_node(swarm_cluster):
    prefix = swarm_cluster.prefix
    nodes = swarm_cluster.nodes
    assert list(nodes) == [f"{prefix}-1", f"{prefix}-2", f"{prefix}-3"]
    assert [n.name for n in nodes.values() if n.manager] == [f"{prefix}-1"]
    manager_info = swarm_cluster.client().info()
    assert manager_info["Name"] == f"{prefix}-1"
    assert manager_info["Swarm"]["ControlAvailable"] is True
    assert swarm_cluster.docker_host == f"tcp://{nodes[f'{prefix}-1'].address}:2375"
    # every node's own engine is in that one swarm; this host's engine is not
    cluster_id = manager_info["Swarm"]["Cluster"]["ID"]
    for name in nodes:
        info = swarm_cluster.node_client(name).info()
        assert info["Name"] == name
        assert info["Swarm"]["LocalNodeState"] == "active"
        assert info["Swarm"]["NodeAddr"] == nodes[name].address
    node_ids = {n.id for n in swarm_cluster.client().nodes.list()}
    host_swarm = docker.from_env().info()["Swarm"]
    assert host_swarm.get("NodeID", "") not in node_ids
    assert (host_swarm.get("Cluster") or {}).get("ID") != cluster_id


def test_nodes_advertise_their_simulated_gpus_and_labels(swarm_cluster):
    prefix = swarm_cluster.prefix
    expected = {
        f"{prefix}-1": (H100, simulated_uuids(f"{prefix}-1", 2, H100)),
        f"{prefix}-2": (A100, simulated_uuids(f"{prefix}-2", 2, A100)),
        f"{prefix}-3": ("", ()),
    }
    assert {n.name: (n.model, n.gpus) for n in swarm_cluster.nodes.values()} == expected
    labels = {
        n.attrs["Description"]["Hostname"]: n.attrs["Spec"]["Labels"]
        for n in swarm_cluster.client().nodes.list()
    }
    assert labels[f"{prefix}-1"]["jupyter-gpu-meter.gpu-count"] == "2"
    assert labels[f"{prefix}-2"]["jupyter-gpu-meter.gpu-count"] == "2"
    assert labels[f"{prefix}-3"] == {"jupyter-gpu-meter.gpu-count": "0"}


def test_gpus_are_exclusive_and_a_third_h100_task_is_pending(swarm_cluster, services):
    h100_node = f"{swarm_cluster.prefix}-1"
    pinned = [f"node.labels.jupyter-gpu-meter.gpu-model=={H100}"]
    sleep = ["sleep", "600"]
    first = services(sleep, resources=gpu_resources(1), constraints=pinned)
    second = services(sleep, resources=gpu_resources(1), constraints=pinned)
    tasks = [
        wait_until(lambda s=s: tasks_in(s, RUNNING), timeout=120, what="an H100 task running")[0]
        for s in (first, second)
    ]
    assert [node_name(swarm_cluster, t) for t in tasks] == [h100_node, h100_node]
    given = [assigned_gpus(t) for t in tasks]
    assert all(len(g) == 1 for g in given)
    assert {g[0] for g in given} == set(swarm_cluster.nodes[h100_node].gpus)
    for task, (uuid_,) in zip(tasks, given, strict=True):
        env = process_env(swarm_cluster, task)
        assert env["DOCKER_RESOURCE_NVIDIA-GPU"] == uuid_
        assert env["NVIDIA_VISIBLE_DEVICES"] == uuid_

    third = services(sleep, resources=gpu_resources(1), constraints=pinned)
    pending = wait_until(
        lambda: [t for t in third.tasks() if t["Status"].get("Err")],
        timeout=30,
        what="the third H100 task's scheduling error",
    )[0]
    assert pending["Status"]["State"] == "pending"
    assert "insufficient resources" in pending["Status"]["Err"]


def test_a_task_without_gpus_keeps_its_own_setting(swarm_cluster, services):
    # As the real runtime: without an assigned GPU the container's own
    # NVIDIA_VISIBLE_DEVICES stands (the image says "all", like PyTorch's), so a
    # spawner sets "void" for a server without GPUs; with one, the assigned UUID
    # wins over the image's "all" (the test above).
    image_env = swarm_cluster.client().images.get(swarm_cluster.image).attrs["Config"]["Env"]
    assert "NVIDIA_VISIBLE_DEVICES=all" in image_env
    service = services(["sleep", "600"], env={"NVIDIA_VISIBLE_DEVICES": "void"})
    task = wait_until(lambda: tasks_in(service, RUNNING), timeout=120, what="a task")[0]
    assert assigned_gpus(task) == []
    env = process_env(swarm_cluster, task)
    assert "DOCKER_RESOURCE_NVIDIA-GPU" not in env
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.seen.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hub")

    def log_message(self, *args):
        pass


# In every task: ask this host (the "hub") once, report what else it can reach,
# then serve HTTP on 8888 for this host to reach through the published port.
TASK_SCRIPT = """
import os, socket, urllib.request
from concurrent.futures import ThreadPoolExecutor
def reach(host, port):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, port)); return "open"
    except OSError:
        return "blocked"
    finally:
        s.close()
probes = [probe.rsplit(":", 1) for probe in os.environ["PROBES"].split()]
def probe(address_port):
    address, port = address_port
    return f"{address}:{port}={reach(address, int(port))}"
with ThreadPoolExecutor(len(probes)) as pool:
    others = ",".join(pool.map(probe, probes))
urllib.request.urlopen(os.environ["HUB"] + "/" + os.environ["NODE"] + "?" + others, timeout=10)
os.execvp("python3", ["python3", "-m", "http.server", "8888"])
"""


def test_networking_contract_both_ways_on_every_node(swarm_cluster, services):
    seen = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer((swarm_cluster.gateway, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hub = f"http://{swarm_cluster.gateway}:{server.server_address[1]}"
        # what a notebook must not reach: any node's engine API, other nodes' Swarm port
        probes = " ".join(
            f"{n.address}:2375 {n.address}:7946" for n in swarm_cluster.nodes.values()
        )
        service = services(
            ["python3", "-c", TASK_SCRIPT],
            env={"HUB": hub, "NODE": "{{.Node.Hostname}}", "PROBES": probes},
            mode=docker.types.ServiceMode("global"),
            endpoint_spec=docker.types.EndpointSpec(
                ports=[{"Protocol": "tcp", "TargetPort": 8888, "PublishMode": "host"}]
            ),
        )
        names = set(swarm_cluster.nodes)
        tasks = wait_until(
            lambda: (t := tasks_in(service, RUNNING)) and len(t) == len(names) and t,
            timeout=120,
            what="a task on every node",
        )
        # a task on any node reaches this host at the gateway address, and nothing else
        wait_until(lambda: len(seen) == len(names), timeout=60, what="every task's request")
        reached = {path.split("?")[0].strip("/"): path.split("?")[1] for path in seen}
        assert set(reached) == names
        for node, report in reached.items():
            assert "open" not in report, f"a task on {node} reached {report}"
        # this host reaches every task at <node address>:<published port>
        for task in tasks:
            node = swarm_cluster.nodes[node_name(swarm_cluster, task)]
            (port,) = [p["PublishedPort"] for p in task["Status"]["PortStatus"]["Ports"]]
            url = f"http://{node.address}:{port}/"
            status = wait_until(
                lambda url=url: _get(url), timeout=30, what=f"the task on {node.name} at {url}"
            )
            assert status == 200
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_on_localhost_is_exposed_to_tasks(swarm_cluster, services):
    # e.g. PostgreSQL of scripts/start-postgres (127.0.0.1 only) for the agents
    seen = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with swarm_cluster.expose(server.server_address[1]) as (address, port):
            fetch = f"import urllib.request; urllib.request.urlopen('http://{address}:{port}/x')"
            services(
                ["python3", "-c", fetch],
                constraints=[f"node.hostname=={swarm_cluster.prefix}-3"],
                restart_policy=docker.types.RestartPolicy(condition="none"),
            )
            wait_until(lambda: seen == ["/x"], timeout=60, what="the task's request")
    finally:
        server.shutdown()
        server.server_close()


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status
    except OSError:
        return None


def test_env_prints_the_manager_and_the_nodes(swarm_cluster):
    from tests.cluster import parse_env, run_script

    env = parse_env(run_script("env", prefix=swarm_cluster.prefix))
    assert env["DOCKER_HOST"] == swarm_cluster.docker_host
    assert env["JGM_CLUSTER_GATEWAY"] == swarm_cluster.gateway
    nodes = dict(item.split("=", 1) for item in env["JGM_CLUSTER_NODES"].split(","))
    assert nodes == {n.name: n.address for n in swarm_cluster.nodes.values()}


def script_fails(*args, prefix, env=None):
    """Run scripts/swarm-cluster expecting it to fail; its exit status and stderr."""
    from tests.cluster import SCRIPT

    done = subprocess.run(
        [str(SCRIPT), *args],
        env={**os.environ, "JGM_CLUSTER": prefix, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0, done.stdout
    return done.returncode, done.stderr


def test_the_script_names_what_is_missing(swarm_cluster):
    absent = swarm_cluster.unique("absent")
    assert script_fails("env", prefix=absent) == (
        1,
        f"swarm-cluster: ERROR: cluster {absent} is down (scripts/swarm-cluster up)\n",
    )
    code, err = script_fails("status", prefix=absent)
    assert (code, err) == (1, f"swarm-cluster: cluster {absent} is down\n")
    code, err = script_fails("load", "jgm-test/no-such-image:1", prefix=swarm_cluster.prefix)
    assert "no image jgm-test/no-such-image:1 on this host" in err
    code, err = script_fails("frobnicate", prefix=swarm_cluster.prefix)
    assert code == 2 and "swarm-cluster up" in err


def test_a_node_whose_engine_cannot_start_fails_up_with_its_log(swarm_cluster):
    prefix = swarm_cluster.unique("broken")
    try:
        code, err = script_fails(
            "up", "--no-load", prefix=prefix, env={"JGM_CLUSTER_STORAGE": "no-such-driver"}
        )
        assert code == 1
        assert f"node {prefix}-1 exited while starting" in err
        assert "no-such-driver" in err  # dockerd's own complaint, from the node's log
    finally:
        subprocess.run(
            [str(REPO / "scripts" / "swarm-cluster"), "down", "--volumes"],
            env={**os.environ, "JGM_CLUSTER": prefix},
            capture_output=True,
            timeout=300,
        )
