"""GPUSwarmSpawner end to end: a real hub on this host, the 3-node Swarm of
scripts/swarm-cluster (2 × H100, 2 × A100, no GPU), the slim notebook image.

Every check is one an admin would make: what the hub's REST API answers (and
its spawner state), which node `docker service ps` names, which GPU the
notebook's own process sees (``/proc/1/environ`` in its container on its node).
The start that loses a race inside Swarm (another hub took the GPUs after this
one counted them) is driven with the spawner class itself, as that hub would.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
from types import SimpleNamespace

import pytest

from tests.hub import Hub, login
from tests.metering import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
SERVICE_LABEL = "com.docker.swarm.service.name"


class ClusterHub(Hub):
    """A hub on this host whose GPUSwarmSpawner talks to the cluster's manager."""

    def __init__(self, tmp_path, cluster, **extra):
        super().__init__(tmp_path, cluster.client(), None, **extra)
        self.cluster = cluster
        self.manager = cluster.client()
        self.settings["extra"].update(
            {
                "JupyterHub.spawner_class": "jupyter_gpu_meter.GPUSwarmSpawner",
                # the one address of this host the nodes' containers reach
                "JupyterHub.hub_ip": cluster.gateway,
                "JupyterHub.load_roles": [
                    {
                        "name": "cluster-state",
                        "scopes": ["admin:server_state"],
                        "services": ["test-admin"],
                    }
                ],
                "GPUSwarmSpawner.client_kwargs": {"base_url": cluster.docker_host},
                "GPUSwarmSpawner.image": cluster.image,
                "GPUSwarmSpawner.network_name": "",
                "GPUSwarmSpawner.pull_policy": "skip",
                "GPUSwarmSpawner.pull_on_nodes": False,  # loaded on every node, no registry
                "GPUSwarmSpawner.name_template": self.prefix + "{username}",
                **extra,
            }
        )
        self.env["JGM_TEST_SETTINGS"] = json.dumps(self.settings)

    def services(self, user: str | None = None):
        found = self.manager.services.list(filters={"name": self.prefix})
        return [
            service
            for service in found
            if service.name.startswith(self.prefix)
            and (user is None or service.name == self.prefix + user)
        ]

    def state(self, user: str) -> dict:
        model = self.api("GET", f"/users/{user}").json()
        return model["servers"][""]["state"]

    def placement(self, user: str) -> tuple[str, list[str], dict]:
        """(node, GPUs Swarm assigned, what the notebook's process sees) of `user`'s server."""
        (service,) = self.services(user)
        (task,) = service.tasks(filters={"desired-state": "running"})
        node = self.manager.nodes.get(task["NodeID"]).attrs["Description"]["Hostname"]
        assigned = [
            resource["NamedResourceSpec"]["Value"]
            for resource in task.get("GenericResources") or []
            if resource.get("NamedResourceSpec", {}).get("Kind") == "NVIDIA-GPU"
        ]
        (container,) = self.cluster.node_client(node).containers.list(
            filters={"label": f"{SERVICE_LABEL}={service.name}"}
        )
        result = container.exec_run(["cat", "/proc/1/environ"])
        assert result.exit_code == 0, result.output
        environ = dict(
            item.split("=", 1) for item in result.output.decode().split("\0") if "=" in item
        )
        return node, assigned, environ

    def cleanup(self):
        self.stop()
        for service in self.services():
            service.remove()
        wait_until_no_gpu_is_held(self.manager)


def wait_until_no_gpu_is_held(manager, timeout: float = 60):
    """Until no task holds a GPU: a removed service's task holds its GPUs until its
    container has stopped (the next test would count them taken)."""
    from jupyter_gpu_meter import cluster

    deadline = time.monotonic() + timeout
    while cluster.assigned_uuids(manager.api.tasks()):
        assert time.monotonic() < deadline, "tasks still hold GPUs"
        time.sleep(0.2)


@pytest.fixture
def cluster_hub(tmp_path, swarm_cluster, request):
    hubs = []

    def make(**extra):
        hub = ClusterHub(tmp_path / f"cluster-hub{len(hubs)}", swarm_cluster, **extra)
        hubs.append(hub)
        return hub.start()

    yield make
    failed = getattr(request.node, "rep_call", None)
    for hub in hubs:
        if failed is not None and failed.failed:
            print(hub.logs())
        hub.cleanup()


@pytest.fixture(autouse=True)
def own_docker_client():
    """DockerSpawner keeps one Docker client per class for the whole process
    (``GPUSwarmSpawner._client``): one made by an earlier test (tests/test_swarm_spawner.py,
    the local engine) would serve :func:`spawner_of`'s spawners here. Each test starts
    without one, and leaves none behind."""
    from jupyter_gpu_meter import GPUSwarmSpawner

    GPUSwarmSpawner._client = None
    yield
    GPUSwarmSpawner._client = None


def node_of_model(cluster, model: str) -> str:
    (name,) = [name for name, node in cluster.nodes.items() if node.model == model]
    return name


def test_an_a100_user_lands_on_the_a100_node_and_sees_only_its_gpu(cluster_hub, swarm_cluster):
    hub = cluster_hub()
    assert hub.start_server("ada", {"gpus": 1, "gpu_model": A100}).status_code in (201, 202)
    assert hub.server_model("ada")["ready"]
    node, assigned, environ = hub.placement("ada")
    a100_node = node_of_model(swarm_cluster, A100)
    assert node == a100_node
    assert len(assigned) == 1 and assigned[0] in swarm_cluster.nodes[a100_node].gpus
    # the node's runtime turned Swarm's assignment into the one visible GPU
    assert environ["DOCKER_RESOURCE_NVIDIA-GPU"] == assigned[0]
    assert environ["NVIDIA_VISIBLE_DEVICES"] == assigned[0]
    state = hub.state("ada")
    assert (state["node"], state["gpu_uuids"], state["gpu_model"]) == (a100_node, assigned, A100)
    labels = hub.services("ada")[0].attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Labels"]
    assert labels["jupyter-gpu-meter.gpu-count"] == "1"
    assert labels["jupyter-gpu-meter.gpu-model"] == A100

    # the spawn form counts across the cluster
    form = html.unescape(login(hub, "bob").get(hub.url + "/hub/spawn", timeout=30).text)
    assert f"{A100} (1 of 2 free)" in form and f"{H100} (2 of 2 free)" in form

    # a restarted hub finds the server where it was (its state names the node)
    hub.restart()
    assert hub.server_model("ada")["ready"]
    assert hub.state("ada")["node"] == a100_node and hub.placement("ada")[1] == assigned

    # a CPU-only server may land anywhere and sees no GPU
    assert hub.start_server("cpu", {"gpus": 0}).status_code in (201, 202)
    _, assigned, environ = hub.placement("cpu")
    assert assigned == [] and environ["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_four_users_get_four_gpus_and_the_fifth_is_refused_at_once(cluster_hub, swarm_cluster):
    hub = cluster_hub()
    pairs = {}
    for user in ("u1", "u2", "u3", "u4"):
        assert hub.start_server(user, {"gpus": 1}).status_code in (201, 202)
        node, assigned, environ = hub.placement(user)
        assert environ["NVIDIA_VISIBLE_DEVICES"] == ",".join(assigned)
        pairs[user] = (node, *assigned)
    assert len(set(pairs.values())) == 4, pairs
    assert sorted(node for node, _ in pairs.values()) == sorted(
        [node_of_model(swarm_cluster, H100)] * 2 + [node_of_model(swarm_cluster, A100)] * 2
    )

    began = time.monotonic()
    refused = hub.start_server("u5", {"gpus": 1})
    took = time.monotonic() - began
    assert refused.status_code == 503
    assert refused.json()["message"] == "no free GPU: 0 of 4 free on 2 nodes"
    assert took < 5, f"the refusal took {took:.1f} s"
    assert hub.server_model("u5") is None
    assert hub.services("u5") == []  # nothing left behind
    refused = hub.start_server("u6", {"gpus": 1, "gpu_model": H100})
    assert refused.json()["message"] == f"no free {H100}: 0 of 2 free on 1 node"


def test_a_twelve_way_start_race_never_gives_one_gpu_twice(cluster_hub):
    hub = cluster_hub()
    users = [f"r{i}" for i in range(12)]
    began = time.monotonic()
    responses = hub.start_many([(user, {"gpus": 1}) for user in users])
    took = time.monotonic() - began
    started = [user for user in users if (hub.server_model(user) or {}).get("ready")]
    refused = [r for r in responses if r.status_code == 503]
    assert len(started) == 4 and len(refused) == 8, [r.text for r in responses]
    assert {r.json()["message"] for r in refused} == {"no free GPU: 0 of 4 free on 2 nodes"}
    seen = [hub.placement(user)[2]["NVIDIA_VISIBLE_DEVICES"] for user in started]
    assert len(set(seen)) == 4 and all(uuid.startswith("GPU-") for uuid in seen), seen
    assert sorted(service.name for service in hub.services()) == sorted(
        hub.prefix + user for user in started
    )
    print(f"\n12-way race: 4 started, 8 refused in {took:.1f} s")


def spawner_of(cluster, user, prefix, options, **settings):
    """GPUSwarmSpawner as a hub makes it for `user`, driven here without the hub process
    (the hub's parts it reads are plain stand-ins)."""
    from jupyterhub import orm
    from traitlets.config import Config

    from jupyter_gpu_meter import GPUSwarmSpawner

    made = GPUSwarmSpawner(
        user=SimpleNamespace(name=user, id=1, url=f"/user/{user}/", groups=[]),
        orm_spawner=orm.Spawner(name=""),
        hub=SimpleNamespace(
            api_url=f"http://{cluster.gateway}:8081/hub/api",
            url="/hub/",
            base_url="/",
            public_host="",
        ),
        config=Config(
            {
                "GPUSwarmSpawner": {
                    "image": cluster.image,
                    "client_kwargs": {"base_url": cluster.docker_host},
                    "pull_on_nodes": False,
                    "name_template": prefix + "{username}",
                    "cmd": ["sleep", "infinity"],  # no hub to report to: the task just runs
                    **settings,
                }
            }
        ),
    )
    made.user_options = options
    return made


def services_named(cluster, prefix):
    return [s.name for s in cluster.client().services.list(filters={"name": prefix})]


def test_a_start_that_loses_the_race_inside_swarm_fails_within_pending_timeout(swarm_cluster):
    """Another hub took both A100s after this one counted them free: the task stays
    pending, the start fails within pending_timeout with the cluster-counted message,
    and its service is removed."""
    prefix = swarm_cluster.unique("race") + "-"
    wait_until_no_gpu_is_held(swarm_cluster.client())
    two_a100 = {"gpus": 2, "gpu_model": A100}

    async def race():
        late = spawner_of(swarm_cluster, "late", prefix, two_a100, pending_timeout=3)
        first = spawner_of(swarm_cluster, "first", prefix, two_a100)
        stale = await late.read_cluster()  # both A100s free when it counted
        await first.start_chosen(first.choose(*(await first.read_cluster())))
        assert first.node == node_of_model(swarm_cluster, A100)
        try:
            choice = late.choose(*stale)
            began = time.monotonic()
            with pytest.raises(Exception) as error:
                await late.start_chosen(choice)
            return error.value, time.monotonic() - began
        finally:
            await first.stop()

    error, took = asyncio.run(race())
    assert error.status_code == 503
    assert error.jupyterhub_message == f"no free {A100}: 0 of 2 free on 1 node"
    assert 3 <= took < 8, took
    assert services_named(swarm_cluster, prefix) == []


def test_starts_refused_after_the_choice_leave_no_service(swarm_cluster):
    """The per-user maximum (over the user's other servers' services), an image the
    manager lacks, a task that fails before it runs: each a clear error, nothing left."""
    prefix = swarm_cluster.unique("refused") + "-"
    wait_until_no_gpu_is_held(swarm_cluster.client())

    async def start(made):
        with pytest.raises(Exception) as error:
            await made.start_chosen(made.choose(*(await made.read_cluster())))
        return error.value

    async def refusals():
        held = spawner_of(swarm_cluster, "mx", prefix + "a-", {"gpus": 1}, max_gpus_per_user=1)
        await held.start_chosen(held.choose(*(await held.read_cluster())))
        try:
            more = spawner_of(swarm_cluster, "mx", prefix + "b-", {"gpus": 1}, max_gpus_per_user=1)
            too_many = await start(more)
        finally:
            await held.stop()
        no_image = await start(
            spawner_of(swarm_cluster, "ni", prefix, {"gpus": 1}, image="jupyter-gpu-meter/nope:1")
        )
        broken = await start(
            spawner_of(
                swarm_cluster,
                "br",
                prefix,
                {"gpus": 0},
                extra_container_spec={"command": ["/no/such/program"]},
            )
        )
        return too_many, no_image, broken

    too_many, no_image, broken = asyncio.run(refusals())
    assert too_many.status_code == 400
    assert too_many.jupyterhub_message == (
        "you hold 1 GPU(s) in other servers and asked for 1; at most 1 per user"
    )
    assert no_image.status_code == 500
    assert "image jupyter-gpu-meter/nope:1 is not on the Swarm manager" in (
        no_image.jupyterhub_message
    )
    assert broken.status_code == 500
    assert broken.jupyterhub_message.startswith("the server's task failed before it ran: ")
    assert "/no/such/program" in broken.jupyterhub_message
    assert services_named(swarm_cluster, prefix) == []


def node_is(manager, name: str, state: str) -> bool:
    return any(
        node.attrs["Description"]["Hostname"] == name and node.attrs["Status"]["State"] == state
        for node in manager.nodes.list()
    )


def test_a_start_on_a_node_that_goes_down_fails_once_swarm_says_so(swarm_cluster):
    """The A100 node stops answering (its engine frozen: ``docker pause`` of the node)
    right after an A100 start counted it free: Swarm, not knowing yet, places the
    task there. The start fails (503, service removed) as soon as the manager marks
    the node down, not at the hub's start_timeout; then an A100 start is refused at
    once naming the node, and the spawn form counts its GPUs, none free."""
    import docker
    from jupyter_gpu_meter.spawn_form import model_counts

    prefix = swarm_cluster.unique("down") + "-"
    manager = swarm_cluster.client()
    wait_until_no_gpu_is_held(manager)
    node = node_of_model(swarm_cluster, A100)
    frozen = docker.from_env().containers.get(node)  # the node's Docker-in-Docker container
    one_a100 = {"gpus": 1, "gpu_model": A100}

    async def scenario():
        first = spawner_of(swarm_cluster, "first", prefix, one_a100)
        choice = first.choose(*(await first.read_cluster()))
        frozen.pause()
        began = time.monotonic()
        with pytest.raises(Exception) as error:
            await first.start_chosen(choice)
        took = time.monotonic() - began
        later = spawner_of(swarm_cluster, "later", prefix, one_a100)
        with pytest.raises(Exception) as refused:
            later.choose(*(await later.read_cluster()))
        inventory, held = await later.discover_gpus(), await later.held_gpus()
        return error.value, took, refused.value, model_counts(inventory.gpus, held)

    try:
        error, took, refused, counts = asyncio.run(scenario())
        assert node_is(manager, node, "down")
    finally:
        frozen.reload()
        if frozen.status == "paused":
            frozen.unpause()
        wait_until(lambda: node_is(manager, node, "ready"), 120, f"{node} ready again")
        wait_until_no_gpu_is_held(manager, 120)
    said = getattr(error, "jupyterhub_message", error)
    print(f"\nstart on a node that went down: failed after {took:.1f} s: {said}")
    # Swarm, once it marks the node down, either fails the task ("assigned node no
    # longer meets constraints") or replaces it with one that finds no node, or the
    # spawner sees the node down first: each a 503 naming the node
    assert error.status_code == 503, error
    assert error.jupyterhub_message in (
        f"the node Swarm placed this server on, {node}, is down: start it again "
        "(the GPUs of a node that is down are not offered)",
        f"no free {A100}: 0 of 2 free on 1 node ({node} is down)",
    )
    assert took < 60, took  # Swarm marks a silent node down in about 12 s; start_timeout is longer
    assert refused.status_code == 503
    assert refused.jupyterhub_message == f"no free {A100}: 0 of 2 free on 1 node ({node} is down)"
    assert counts[A100] == (2, 0)
    assert services_named(swarm_cluster, prefix) == []


PROBE = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print(target, "open")
    except OSError as e:
        print(target, "closed", type(e).__name__)
"""


def test_notebooks_reach_the_hub_but_not_each_other_nor_the_engines(cluster_hub, swarm_cluster):
    hub = cluster_hub()
    for user, model in (("ada", A100), ("bob", H100), ("cyd", H100)):
        assert hub.start_server(user, {"gpus": 1, "gpu_model": model}).status_code in (201, 202)
    where = {}
    for user in ("ada", "bob", "cyd"):
        (task,) = hub.services(user)[0].tasks(filters={"desired-state": "running"})
        port = task["Status"]["PortStatus"]["Ports"][0]["PublishedPort"]
        where[user] = (hub.state(user)["node"], hub.state(user)["node_address"], port)
    hub_port = hub.settings["hub_port"]
    targets = {
        f"{swarm_cluster.gateway}:{hub_port}": "open",  # the hub's API
        f"{where['bob'][1]}:{where['bob'][2]}": "closed",  # a notebook on another node
        f"{where['ada'][1]}:2375": "closed",  # its own node's engine
        f"{swarm_cluster.docker_host.split('//')[1]}": "closed",  # the manager's engine
    }
    if where["bob"][0] == where["cyd"][0]:  # two notebooks on one node: not each other
        targets[f"{where['cyd'][1]}:{where['cyd'][2]}"] = "closed"
    for user in ("ada", "bob"):
        node = where[user][0]
        (container,) = swarm_cluster.node_client(node).containers.list(
            filters={"label": f"{SERVICE_LABEL}={hub.prefix}{user}"}
        )
        probe = {**targets}
        if user == "bob":  # from bob: ada on the other node
            probe.pop(f"{where['bob'][1]}:{where['bob'][2]}")
            probe[f"{where['ada'][1]}:{where['ada'][2]}"] = "closed"
        result = container.exec_run(["python3", "-c", PROBE, *probe])
        seen = dict(line.split()[:2] for line in result.output.decode().splitlines())
        assert seen == probe, (user, result.output.decode())
