"""What :class:`~jupyter_gpu_meter.swarm.GPUSwarmSpawner` asks Docker Swarm for. Pure.

:func:`place` decides, from the cluster's GPUs and the ones running tasks hold
(:mod:`jupyter_gpu_meter.cluster`), which model a request gets or why none can
be had, in the one-host wording counted across the cluster.
:func:`enforce_service_kwargs` is the last word on a service's create request,
as :func:`~jupyter_gpu_meter.container.enforce_create_kwargs` is on a
container's: the GPU count becomes a generic-resource reservation, the model a
placement constraint, and the labels, environment and hardening are set over
whatever DockerSpawner's and the admin's settings said. :func:`task_outcome`
reads a task: still waiting, running (on which node, with which GPUs) or failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from . import cluster, labels
from .container import (
    GPU_VISIBILITY_ENV,
    SSH_ENV,
    Hardening,
    _environment_dict,
    check_container_user,
    refuse_unsafe,
    refuse_writable,
)

#: the container label saying how many GPUs the server asked for (= labels.GPU_COUNT)
GPU_COUNT = labels.PREFIX + "gpu-count"
#: where a notebook's shared memory is: a tmpfs of ``shm_size`` (services have no ShmSize)
SHM = "/dev/shm"  # noqa: S108 (the container's own, not a temporary file)
#: a task in one of these states has not been placed and started yet
WAITING_STATES = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting")
#: a task in one of these states will never run
FAILED_STATES = ("complete", "failed", "shutdown", "rejected", "orphaned", "remove")


class ClusterFull(Exception):
    """No node can take the request now; the message counts GPUs across the cluster."""


def model_limits(gpus: Iterable) -> dict[str, int]:
    """GPU model -> the most GPUs of it on one node: the most one server can get.

    `gpus` are :class:`~jupyter_gpu_meter.cluster.ClusterGPU` (``node``, ``uuid``, ``model``)
    of every node, ready or not (a model stays known while its nodes are down). The dict
    keeps the order in which models first appear.
    """
    per_node: dict[str, dict[str, int]] = {}
    for gpu in gpus:
        counts = per_node.setdefault(gpu.model, {})
        counts[gpu.node] = counts.get(gpu.node, 0) + 1
    return {model: max(counts.values()) for model, counts in per_node.items()}


def free_after_reservations(
    gpus: Sequence, assigned: Iterable[str], model: str, reserved: Iterable[tuple[str, int]] = ()
) -> dict[str, int]:
    """Node -> free GPUs of `model`, less the `reserved` (model, count) of starts whose
    task Swarm has not placed yet, each taken from the node with the most free."""
    free = cluster.free_on_nodes(gpus, assigned, model)
    for reserved_model, count in reserved:
        if reserved_model != model or not free:
            continue
        node = max(free, key=lambda name: free[name])
        free[node] = max(0, free[node] - count)
    return free


def place(
    gpus: Sequence,
    assigned: Iterable[str],
    count: int,
    model: str | None,
    reserved: Iterable[tuple[str, int]] = (),
) -> str | None:
    """The GPU model a request of `count` GPUs (of `model`, any when None) gets, or
    :class:`ClusterFull`.

    A request fits where one node has `count` GPUs of the model that no running
    task holds (`assigned`: UUIDs) and no start in flight has `reserved` (a list of
    (model, count)). Without a model the first model (in the order of `gpus`)
    that fits is taken, so the service can say which one and carry its price.
    None for a CPU-only request. The refusal is the one-host message counted
    across the cluster (:func:`jupyter_gpu_meter.cluster.no_free_message`), e.g.
    ``no free NVIDIA H100 80GB HBM3: 0 of 4 free on 2 nodes``; the GPUs of a node
    Swarm places nothing on now (down, drained) count there, never as free, and the
    message ends by naming those nodes (``… (gpu-2 is down)``).
    """
    if count <= 0:
        return None
    assigned, reserved = set(assigned), list(reserved)
    models = [model] if model else list(dict.fromkeys(gpu.model for gpu in gpus))
    free: dict[str, int] = {}
    for candidate in models:
        on_nodes = free_after_reservations(gpus, assigned, candidate, reserved)
        if max(on_nodes.values(), default=0) >= count:
            return candidate
        free.update(on_nodes)  # one model per node: the nodes never overlap
    total = sum(1 for gpu in gpus if model is None or gpu.model == model)
    message = cluster.no_free_message(
        model,
        sum(free.values()),
        total,
        len(free),
        requested=count,
        most=max(free.values(), default=0),
    )
    raise ClusterFull(message + cluster.unavailable_note(gpus, model))


def generic_resources(count: int) -> list[dict]:
    """A reservation of `count` GPUs, as the Engine API's ``GenericResources``."""
    if count <= 0:
        return []
    return [{"DiscreteResourceSpec": {"Kind": cluster.GPU_RESOURCE_KIND, "Value": count}}]


def swarm_gpu_environment(env: Mapping[str, str], gpu_count: int) -> dict[str, str]:
    """`env` without GPU-visibility variables, plus what the task must see.

    ``NVIDIA_VISIBLE_DEVICES=void`` on every task: the node's NVIDIA runtime
    (its ``swarm-resource`` setting) attaches exactly the GPUs in
    ``$DOCKER_RESOURCE_NVIDIA-GPU``, which Docker sets once Swarm has picked
    them, and falls back to ``NVIDIA_VISIBLE_DEVICES`` only where that is
    absent: a CPU-only task (or an image saying ``all``) gets none. CPU only,
    ``CUDA_VISIBLE_DEVICES`` is empty too, as on one host.
    """
    env = {key: value for key, value in env.items() if key not in GPU_VISIBILITY_ENV}
    env.pop(cluster.SWARM_RESOURCE_ENV, None)  # only Docker sets it
    env["NVIDIA_VISIBLE_DEVICES"] = "void"
    if gpu_count:
        env["NVIDIA_DRIVER_CAPABILITIES"] = "compute,utility"
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _mounts_as_host_config(mounts: Sequence[Mapping]) -> dict:
    """A service's mounts in the form :func:`~jupyter_gpu_meter.container.refuse_unsafe` reads."""
    return {"Mounts": [dict(mount) for mount in mounts]}


def enforce_service_kwargs(
    create_kwargs: Mapping,
    *,
    gpu_count: int,
    gpu_model: str | None,
    container_labels: Mapping[str, str],
    hardening: Hardening,
    port: int = 8888,
    publish_mode: str = "host",
) -> dict:
    """A copy of docker-py ``create_service`` kwargs with GPUs, labels and limits enforced.

    `create_kwargs` holds ``task_template`` (with ``ContainerSpec``, ``Resources``,
    ``Placement``) as DockerSpawner's SwarmSpawner builds it with the admin's
    ``extra_*_spec`` settings. :class:`~jupyter_gpu_meter.container.ContainerRefused`
    for a root user, a mount that needs an opt-in ``hardening.allow_unsafe`` lacks,
    or a dataset volume mounted writable. The task never restarts (a restart
    could land elsewhere, with other GPUs, unseen by the hub). The notebook's
    `port` is published in `publish_mode`: ``"host"`` on its node's address only,
    a port Docker picks (the task's ``Status.PortStatus``); ``"ingress"`` through
    Swarm's routing mesh on every node.
    """
    check_container_user(hardening.user)
    kwargs = dict(create_kwargs)
    task = dict(kwargs["task_template"])
    spec = dict(task["ContainerSpec"])

    env = swarm_gpu_environment(_environment_dict(spec.get("Env")), gpu_count)
    if labels.SSH in container_labels:
        env[SSH_ENV] = container_labels[labels.SSH]
    spec["Env"] = [f"{key}={value}" for key, value in env.items()]
    all_labels = {**container_labels, GPU_COUNT: str(gpu_count)}
    spec["Labels"] = {**dict(spec.get("Labels") or {}), **all_labels}
    spec["User"] = hardening.user
    mounts = [dict(mount) for mount in spec.get("Mounts") or []]
    refuse_unsafe(_mounts_as_host_config(mounts), hardening.allow_unsafe)
    refuse_writable(_mounts_as_host_config(mounts), hardening.read_only_volumes)
    mounts = [mount for mount in mounts if mount.get("Target") != SHM]
    mounts.append(
        {
            "Type": "tmpfs",
            "Target": SHM,
            "TmpfsOptions": {"SizeBytes": hardening.shm_size_bytes},
        }
    )
    spec["Mounts"] = mounts
    spec["CapabilityDrop"] = ["ALL"]
    spec["CapabilityAdd"] = list(hardening.cap_add)
    spec.pop("Privileges", None)  # credential specs and SELinux/AppArmor overrides: none
    spec["Ulimits"] = [
        {"Name": name, "Soft": value, "Hard": value} for name, value in hardening.ulimits.items()
    ]
    task["ContainerSpec"] = spec

    resources = dict(task.get("Resources") or {})
    reservations = dict(resources.get("Reservations") or {})
    reservations.pop("GenericResources", None)
    if gpu_count:
        reservations["GenericResources"] = generic_resources(gpu_count)
    resources["Reservations"] = reservations
    resources["Limits"] = {**dict(resources.get("Limits") or {}), "Pids": hardening.pids_limit}
    task["Resources"] = resources

    placement = dict(task.get("Placement") or {})
    constraints = [
        c for c in placement.get("Constraints") or [] if not _is_model_constraint(str(c))
    ]
    if gpu_count and gpu_model:
        constraints.append(cluster.placement_constraint(gpu_model))
    placement["Constraints"] = constraints
    task["Placement"] = placement
    task["RestartPolicy"] = {"Condition": "none", "MaxAttempts": 0}
    kwargs["task_template"] = task
    kwargs["endpoint_spec"] = {
        **dict(kwargs.get("endpoint_spec") or {}),
        "Ports": [{"Protocol": "tcp", "TargetPort": port, "PublishMode": publish_mode}],
    }
    kwargs["labels"] = {**dict(kwargs.get("labels") or {}), **all_labels}
    return kwargs


def _is_model_constraint(constraint: str) -> bool:
    return constraint.replace(" ", "").startswith(f"node.labels.{cluster.MODEL_LABEL}")


# --- reading a task back ----------------------------------------------------


@dataclass(frozen=True)
class TaskOutcome:
    """Where a service's task stands: ``state`` is "waiting", "running" or "failed"."""

    state: str
    node_id: str = ""
    gpu_uuids: tuple[str, ...] = ()
    #: Docker's words for a failure, or why a task waits ("insufficient resources on 3 nodes")
    message: str = ""


def published_port(task: Mapping, service: Mapping, port: int) -> int | None:
    """Where `port` of a task's container is published: on its node (host mode, the
    task's ``Status.PortStatus``) or through the routing mesh (the service's
    ``Endpoint``); None while Docker has not published it."""
    found = ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []
    found += (service.get("Endpoint") or {}).get("Ports") or []
    for entry in found:
        if entry.get("TargetPort") == port and entry.get("PublishedPort"):
            return int(entry["PublishedPort"])
    return None


def assigned_gpus(task: Mapping) -> tuple[str, ...]:
    """The GPU UUIDs Swarm assigned a task (:func:`jupyter_gpu_meter.cluster.task_gpu_uuids`)."""
    return tuple(cluster.task_gpu_uuids(task))


def task_outcome(task: Mapping) -> TaskOutcome:
    """A task (``docker service ps`` / ``tasks`` dict) read as a :class:`TaskOutcome`."""
    status = task.get("Status") or {}
    state = str(status.get("State", "")).lower()
    message = str(status.get("Err") or status.get("Message") or "")
    node_id, gpus = str(task.get("NodeID") or ""), assigned_gpus(task)
    if state == "running":
        return TaskOutcome("running", node_id, gpus, message)
    if state in FAILED_STATES:
        return TaskOutcome("failed", node_id, gpus, message or state)
    return TaskOutcome("waiting", node_id, gpus, message)
