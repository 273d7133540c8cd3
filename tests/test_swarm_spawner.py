"""GPUSwarmSpawner without a cluster: the choice, the refusal and the service it asks for.

The spawner is the real class, configured as jupyterhub_config.py would; the
cluster is what :mod:`jupyter_gpu_meter.cluster` reads from ``docker node
inspect`` (its :class:`ClusterGPU` list), and the create request is built as
DockerSpawner's SwarmSpawner builds it before the spawner enforces its own.
The cluster tests (tests/test_e2e_cluster.py) run the same against a real Swarm.
"""

import logging
from types import SimpleNamespace

import pytest
from docker.types import ContainerSpec, EndpointSpec, Placement, Resources, TaskTemplate
from jupyterhub import orm
from traitlets.config import Config

from jupyter_gpu_meter import GPUSwarmSpawner, labels
from jupyter_gpu_meter.cluster import ClusterGPU
from jupyter_gpu_meter.container import ContainerRefused
from jupyter_gpu_meter.swarm_spec import (
    GPU_COUNT,
    ClusterFull,
    model_limits,
    place,
    published_port,
    task_outcome,
)

H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
#: the CI cluster: two H100 on node 1, two A100 on node 2, node 3 without GPUs
CLUSTER = [
    ClusterGPU("jgm-1", "GPU-h1", H100),
    ClusterGPU("jgm-1", "GPU-h2", H100),
    ClusterGPU("jgm-2", "GPU-a1", A100),
    ClusterGPU("jgm-2", "GPU-a2", A100),
]
PROFILES = [
    {"display_name": "CPU only", "slug": "cpu", "gpus": 0},
    {"display_name": "One H100", "slug": "h100", "gpus": 1, "gpu_model": H100, "default": True},
    {"display_name": "Two A100", "slug": "a100x2", "gpus": 2, "gpu_model": A100, "mem_limit": "8G"},
]


def spawner(user="ada", options=None, hub_api="http://10.9.0.1:8081/hub/api", **settings):
    made = GPUSwarmSpawner(
        user=SimpleNamespace(name=user, id=1, url=f"/user/{user}/", groups=[]),
        orm_spawner=orm.Spawner(name=""),  # the hub's own record, not in a database
        hub=SimpleNamespace(api_url=hub_api, url="/hub/", base_url="/", public_host=""),
        config=Config(
            {"GPUSwarmSpawner": {"image": "jupyter-gpu-meter/notebook:slim", **settings}}
        ),
    )
    made.user_options = options or {}
    return made


def swarm_request(spawner):
    """The create_service kwargs as DockerSpawner's SwarmSpawner.create_object builds them."""
    container = ContainerSpec(
        image=spawner.image,
        env=spawner.get_env(),
        args=["jupyterhub-singleuser"],
        mounts=spawner.mounts,
        **spawner.extra_container_spec,
    )
    resources = Resources(
        mem_limit=spawner.mem_limit,
        cpu_limit=int(spawner.cpu_limit * 1e9) if spawner.cpu_limit else None,
        **spawner.extra_resources_spec,
    )
    task = TaskTemplate(
        container_spec=container,
        resources=resources,
        placement=Placement(**spawner.extra_placement_spec),
    )
    endpoint = EndpointSpec(ports={None: (spawner.port, "tcp")})
    return {"task_template": task, "endpoint_spec": endpoint, "name": spawner.object_name}


def service_of(spawner, gpus=CLUSTER, assigned=()):
    spawner.choose(gpus, set(assigned))
    return spawner.service_kwargs(swarm_request(spawner))


def env_of(service) -> dict:
    return dict(item.split("=", 1) for item in service["task_template"]["ContainerSpec"]["Env"])


# --- placement: which model, or why not -----------------------------------------


def test_model_limits_are_the_most_of_a_model_on_one_node():
    spread = [*CLUSTER, ClusterGPU("jgm-4", "GPU-h3", H100)]
    assert model_limits(spread) == {H100: 2, A100: 2}
    assert model_limits([]) == {}


def test_a_request_gets_its_model_or_the_first_that_fits():
    assert place(CLUSTER, set(), 1, A100) == A100
    assert place(CLUSTER, set(), 2, None) == H100
    assert place(CLUSTER, {"GPU-h1"}, 2, None) == A100  # no H100 node has two free now
    assert place(CLUSTER, set(), 0, None) is None
    assert place(CLUSTER, {"GPU-h1", "GPU-h2", "GPU-a1", "GPU-a2"}, 0, None) is None


def test_no_free_gpu_is_counted_across_the_cluster():
    with pytest.raises(ClusterFull) as refused:
        place(CLUSTER, {"GPU-h1", "GPU-h2"}, 1, H100)
    assert str(refused.value) == f"no free {H100}: 0 of 2 free on 1 node"
    four = [*CLUSTER, ClusterGPU("jgm-4", "GPU-h3", H100), ClusterGPU("jgm-4", "GPU-h4", H100)]
    with pytest.raises(ClusterFull) as refused:
        place(four, {"GPU-h1", "GPU-h2", "GPU-h3", "GPU-h4"}, 1, H100)
    assert str(refused.value) == f"no free {H100}: 0 of 4 free on 2 nodes"


def test_a_model_whose_node_is_down_is_refused_as_busy_not_unknown():
    down = [
        *CLUSTER[:2],
        ClusterGPU("jgm-2", "GPU-a1", A100, "down"),
        ClusterGPU("jgm-2", "GPU-a2", A100, "down"),
    ]
    assert model_limits(down) == {H100: 2, A100: 2}  # an A100 request is still valid
    with pytest.raises(ClusterFull) as refused:
        place(down, set(), 1, A100)
    assert str(refused.value) == f"no free {A100}: 0 of 2 free on 1 node (jgm-2 is down)"
    assert place(down, set(), 1, None) == H100  # any model: the ready node's
    made = spawner(options={"gpus": 1, "gpu_model": A100})
    with pytest.raises(Exception) as error:
        made.choose(down, set())
    assert error.value.status_code == 503
    assert error.value.jupyterhub_message == str(refused.value)


def test_free_gpus_on_different_nodes_do_not_make_a_pair():
    four = [*CLUSTER, ClusterGPU("jgm-4", "GPU-h3", H100), ClusterGPU("jgm-4", "GPU-h4", H100)]
    with pytest.raises(ClusterFull) as refused:
        place(four, {"GPU-h1", "GPU-h3"}, 2, H100)
    assert str(refused.value) == (
        f"not enough free {H100} on one node: 2 requested, 2 of 4 free on 2 nodes "
        "(at most 1 on one node)"
    )
    with pytest.raises(ClusterFull, match=r"^no free GPU: 0 of 4 free on 2 nodes$"):
        place(CLUSTER, {"GPU-h1", "GPU-h2", "GPU-a1", "GPU-a2"}, 1, None)


def test_starts_in_flight_count_until_swarm_has_placed_them():
    # two 1-GPU starts on their way to the H100 node: a third goes to the A100s
    assert place(CLUSTER, set(), 1, None, [(H100, 1), (H100, 1)]) == A100
    with pytest.raises(ClusterFull) as refused:
        place(CLUSTER, {"GPU-a1"}, 1, None, [(H100, 2), (A100, 1)])
    assert str(refused.value) == "no free GPU: 0 of 4 free on 2 nodes"


@pytest.fixture(autouse=True)
def no_starts_in_flight():
    """Each test starts with no reservation of earlier tests' spawners (one per process)."""
    GPUSwarmSpawner._placing.clear()
    yield
    GPUSwarmSpawner._placing.clear()


# --- the user's choice: one validation with GPUDockerSpawner ---------------------


def test_profiles_and_counts_resolve_against_the_cluster():
    chosen = spawner(profile_list=PROFILES, options={"profile": "a100x2"})
    choice = chosen.choose(CLUSTER, set())
    assert (choice.gpus, choice.gpu_model, chosen.gpu_model, chosen.gpu_count) == (2, A100, A100, 2)
    assert chosen.mem_limit == 8 * 1024**3
    default = spawner(profile_list=PROFILES)
    assert default.choose(CLUSTER, set()).profile == "h100"
    counted = spawner(options={"gpus": 1})
    counted.choose(CLUSTER, set())
    assert (counted.gpu_model, counted.gpu_count) == (H100, 1)  # the first model with room


@pytest.mark.parametrize(
    "options, status, message",
    [
        # the most of a model on one node is the most a server can get
        ({"gpus": 3}, 400, "'gpus' must be a whole number from 0 to 2, got 3"),
        (
            {"gpus": 1, "gpu_model": "Tesla T4"},
            400,
            f"unknown GPU model 'Tesla T4'; available: {H100}, {A100}",
        ),
        ({"profile": "nope"}, 400, "unknown profile 'nope'; available: cpu, h100, a100x2"),
        ({"gpus": 1, "shell": "x"}, 400, "unknown option(s) 'shell'; allowed:"),
        ({"profile": "h100"}, 503, f"no free {H100}: 0 of 2 free on 1 node"),
    ],
)
def test_a_choice_the_cluster_cannot_serve_is_refused_before_any_service(options, status, message):
    refused = spawner(profile_list=PROFILES, options=options)
    with pytest.raises(Exception) as error:
        refused.choose(CLUSTER, {"GPU-h1", "GPU-h2"})
    assert error.value.status_code == status
    assert error.value.jupyterhub_message.startswith(message)
    assert refused.object_id == ""  # nothing was created


def test_concurrent_starts_spread_over_the_models_and_the_fifth_is_refused_at_once():
    starts = [spawner(user, options={"gpus": 1}) for user in ("u1", "u2", "u3", "u4", "u5")]
    for made in starts[:4]:
        made.choose(CLUSTER, set())
    assert [made.gpu_model for made in starts[:4]] == [H100, H100, A100, A100]
    with pytest.raises(Exception) as error:
        starts[4].choose(CLUSTER, set())
    assert error.value.status_code == 503
    assert error.value.jupyterhub_message == "no free GPU: 0 of 4 free on 2 nodes"
    starts[0]._placed()  # its task is placed: its GPU is in the tasks' list from now on
    with pytest.raises(Exception, match="no free GPU"):
        starts[4].choose(CLUSTER, {"GPU-h1"})
    starts[1]._placed()  # its start failed: nothing holds its GPU any more
    starts[4].choose(CLUSTER, {"GPU-h1"})
    assert starts[4].gpu_model == H100


def test_a_profile_of_a_model_the_cluster_lacks_says_what_it_has():
    refused = spawner(
        profile_list=[{"display_name": "T4", "gpus": 1, "gpu_model": "Tesla T4"}],
        options={"profile": "t4"},
    )
    with pytest.raises(Exception) as error:
        refused.choose(CLUSTER, set())
    assert error.value.jupyterhub_message == (
        f"profile 't4' needs Tesla T4, which this machine does not have; available: {H100}, {A100}"
    )


# --- the service it asks for -------------------------------------------------------


def test_a_gpu_server_reserves_generic_resources_on_a_node_of_its_model():
    service = service_of(spawner(profile_list=PROFILES, options={"profile": "a100x2"}))
    task = service["task_template"]
    assert task["Resources"]["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}}
    ]
    assert task["Placement"]["Constraints"] == [f"node.labels.jupyter-gpu-meter.gpu-model=={A100}"]
    assert task["RestartPolicy"]["Condition"] == "none"  # never restarted elsewhere, unseen
    assert task["Resources"]["Limits"]["MemoryBytes"] == 8 * 1024**3
    found = task["ContainerSpec"]["Labels"]
    assert found[labels.MANAGED] == "1" and found[labels.USER] == "ada"
    assert found[labels.GPU_MODEL] == A100 and found[GPU_COUNT] == "2"
    assert found[labels.GPUS] == ""  # Swarm picks them: $DOCKER_RESOURCE_NVIDIA-GPU says which
    assert found[labels.PROFILE] == "a100x2" and found[labels.HUB]
    assert "jupyter-gpu-meter.price-per-gpu-hour" in found or any(
        key.startswith("jupyter-gpu-meter.price") for key in found
    )
    assert service["labels"][GPU_COUNT] == "2" and service["labels"][labels.USER] == "ada"


def test_a_cpu_server_reserves_nothing_and_sees_no_gpu():
    service = service_of(spawner(profile_list=PROFILES, options={"profile": "cpu"}))
    task = service["task_template"]
    assert "GenericResources" not in task["Resources"]["Reservations"]
    assert task["Placement"]["Constraints"] == []
    env = env_of(service)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert task["ContainerSpec"]["Labels"][GPU_COUNT] == "0"


def test_no_setting_widens_the_gpus_a_task_sees():
    # the admin's environment, an extra constraint on another model, a resource of their own
    service = service_of(
        spawner(
            options={"gpus": 1, "gpu_model": H100},
            environment={"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": "0,1"},
            extra_placement_spec={
                "constraints": [
                    f"node.labels.jupyter-gpu-meter.gpu-model == {A100}",
                    "node.role==worker",
                ]
            },
            extra_resources_spec={"generic_resources": {"NVIDIA-GPU": 4}},
        )
    )
    env = env_of(service)
    # void: the node's runtime attaches exactly $DOCKER_RESOURCE_NVIDIA-GPU, which Docker sets
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void" and "CUDA_VISIBLE_DEVICES" not in env
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    task = service["task_template"]
    assert task["Placement"]["Constraints"] == [
        "node.role==worker",
        f"node.labels.jupyter-gpu-meter.gpu-model=={H100}",
    ]
    assert task["Resources"]["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 1}}
    ]


def test_the_task_is_hardened_as_a_container_on_one_host():
    service = service_of(
        spawner(options={"gpus": 0}, cap_add=["CHOWN"], pids_limit=512, shm_size="2G")
    )
    spec = service["task_template"]["ContainerSpec"]
    assert spec["User"] == "1000:100"
    assert spec["CapabilityDrop"] == ["ALL"] and spec["CapabilityAdd"] == ["CHOWN"]
    assert {"Name": "stack", "Soft": 67108864, "Hard": 67108864} in spec["Ulimits"]
    assert service["task_template"]["Resources"]["Limits"]["Pids"] == 512
    shm = [mount for mount in spec["Mounts"] if mount["Target"] == "/dev/shm"]
    assert shm == [
        {"Type": "tmpfs", "Target": "/dev/shm", "TmpfsOptions": {"SizeBytes": 2 * 1024**3}}
    ]
    env = env_of(service)
    assert env["JUPYTER_GPU_METER_SSH"] == "1" and env["JUPYTER_GPU_METER_IMAGE"]
    assert env["JUPYTERHUB_API_URL"] == "http://10.9.0.1:8081/hub/api"


def test_a_bind_of_the_docker_socket_is_refused_as_on_one_host():
    refused = spawner(options={"gpus": 0}, volumes={"/var/run/docker.sock": "/run/d.sock"})
    with pytest.raises(ContainerRefused, match=r"\(/var/run/docker.sock\) \[docker_engine\]"):
        service_of(refused)
    named = service_of(spawner(options={"gpus": 0}, volumes={"scratch": "/scratch"}))
    (mount,) = [
        m for m in named["task_template"]["ContainerSpec"]["Mounts"] if m["Target"] == "/scratch"
    ]
    assert (mount["Type"], mount["Source"]) == ("volume", "scratch")


def test_a_root_user_is_refused_for_a_service_too():
    made = spawner(options={"gpus": 0})
    made.container_user = "1000:100"
    made.choose(CLUSTER, set())
    request = swarm_request(made)
    object.__setattr__(made, "_trait_values", {**made._trait_values, "container_user": "0"})
    with pytest.raises(ContainerRefused, match="as root"):
        made.service_kwargs(request)


# --- what lives on one host's disk, and where the hub is ---------------------------


def test_homes_datasets_and_host_templates_are_off_on_a_cluster(caplog):
    made = spawner(options={"gpus": 0})
    made.home_volumes.enabled = True
    with caplog.at_level(logging.WARNING):
        assert made.home_volumes.enabled is False
    assert "not available on a Swarm cluster" in caplog.text
    assert made._datasets() == {}


async def test_a_snapshot_needs_homes_which_are_off():
    made = spawner(options={"gpus": 0, "snapshot": "20261130-060102-a1b2c3"})
    choice = made.choose(CLUSTER, set())
    with pytest.raises(Exception) as error:
        await made._restore_home(choice.snapshot)
    assert error.value.status_code == 400
    assert "needs persistent homes: off here" in error.value.jupyterhub_message


def test_a_hub_on_loopback_is_refused_with_the_setting_to_change():
    made = spawner(hub_api="http://127.0.0.1:8081/hub/api")
    with pytest.raises(Exception) as error:
        made._check_hub_reachable()
    assert error.value.status_code == 500
    assert "c.JupyterHub.hub_connect_ip" in error.value.jupyterhub_message
    spawner()._check_hub_reachable()


# --- reading a task back -------------------------------------------------------------


def task(state, node="", gpus=(), err=""):
    return {
        "NodeID": node,
        "Status": {"State": state, "Err": err, "Message": state},
        "GenericResources": [  # where Docker 20.10 puts a task's assigned GPUs
            {"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": uuid}} for uuid in gpus
        ],
    }


def test_a_task_reads_as_waiting_running_or_failed():
    pending = task_outcome(
        task("pending", err="no suitable node (insufficient resources on 3 nodes)")
    )
    assert (pending.state, pending.node_id) == ("waiting", "")
    assert "insufficient resources" in pending.message
    running = task_outcome(task("running", "n1", ("GPU-h1", "GPU-h2")))
    assert (running.state, running.node_id, running.gpu_uuids) == (
        "running",
        "n1",
        ("GPU-h1", "GPU-h2"),
    )
    assert task_outcome(task("preparing", "n1", ("GPU-h1",))).state == "waiting"
    failed = task_outcome(task("rejected", "n1", err="No such image: x"))
    assert (failed.state, failed.message) == ("failed", "No such image: x")


def test_the_state_keeps_node_and_gpus_for_a_restarted_hub():
    made = spawner()
    made.node, made.node_address, made.gpu_uuids, made.gpu_model = (
        "jgm-2",
        "10.1.0.3",
        ["GPU-a1"],
        A100,
    )
    state = made.get_state()
    assert state["node"] == "jgm-2" and state["gpu_uuids"] == ["GPU-a1"]
    again = spawner()
    again.load_state(state)
    assert (again.node, again.node_address, again.gpu_uuids) == ("jgm-2", "10.1.0.3", ["GPU-a1"])
    again.clear_state()
    assert (again.node, again.gpu_uuids) == ("", [])


def test_the_published_port_is_the_task_s_on_its_node_or_the_service_s_mesh_port():
    host = {"Status": {"PortStatus": {"Ports": [{"TargetPort": 8888, "PublishedPort": 30001}]}}}
    assert published_port(host, {}, 8888) == 30001
    mesh = {"Endpoint": {"Ports": [{"TargetPort": 8888, "PublishedPort": 30002}]}}
    assert published_port({}, mesh, 8888) == 30002
    assert published_port(host, mesh, 9999) is None
    assert published_port({"Status": {}}, {}, 8888) is None  # not published yet


def test_publish_mode_is_host_or_ingress():
    assert spawner().publish_mode == "host"
    service = service_of(spawner(options={"gpus": 0}, publish_mode="ingress"))
    assert service["endpoint_spec"]["Ports"] == [
        {"Protocol": "tcp", "TargetPort": 8888, "PublishMode": "ingress"}
    ]
    with pytest.raises(ValueError, match="allowed: 'host' \\(the default\\) or 'ingress'"):
        spawner(publish_mode="mesh")
