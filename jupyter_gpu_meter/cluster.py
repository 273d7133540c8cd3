"""The GPUs of a Docker Swarm cluster, counted from Docker's own JSON: pure, no Docker import.

Each GPU node advertises its GPUs as Swarm node generic resources (kind
:data:`GPU_RESOURCE_KIND`, one per GPU, value = the GPU's UUID) and its model
as the node label :data:`MODEL_LABEL` (``jupyter-gpu-meter node-config``
prints both). Swarm assigns GPUs to tasks exclusively; a task's assigned
GPUs are in its JSON (``GenericResources``) and in its container's
environment (:data:`SWARM_RESOURCE_ENV`, comma-separated).

The functions here take the dicts of ``docker node inspect`` (``GET /nodes``)
and of the tasks (``GET /tasks``) as they come, so the spawner can say, before
it creates a service, whether any node can take a request, and refuse at once
with the one-host wording counted across the cluster
(:func:`no_free_message`): ``no free NVIDIA H100 80GB HBM3: 0 of 4 free on 2 nodes``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: the Swarm generic resource kind of a GPU (daemon.json ``node-generic-resources``)
GPU_RESOURCE_KIND = "NVIDIA-GPU"
#: the variable Docker sets in a task's container: the assigned UUIDs, comma-separated
SWARM_RESOURCE_ENV = "DOCKER_RESOURCE_" + GPU_RESOURCE_KIND
#: node label: the node's GPU model, as NVML names it (one model per node)
MODEL_LABEL = "jupyter-gpu-meter.gpu-model"
#: node label: how many GPUs the node has
COUNT_LABEL = "jupyter-gpu-meter.gpu-count"
#: task states in which a task holds its assigned resources (Swarm's scheduler
#: counts a task from assignment until it is past "running")
HOLDING_STATES = frozenset({"assigned", "accepted", "preparing", "ready", "starting", "running"})


@dataclass(frozen=True)
class ClusterGPU:
    """One GPU of a Swarm node."""

    #: the node's hostname (= its Docker engine's name, the node name in the ledger)
    node: str
    uuid: str
    #: the node's :data:`MODEL_LABEL`; "" when the node has no such label
    model: str
    #: "ready" while Swarm places tasks on the node (:func:`schedulable`); else why
    #: not: its state ("down", "unknown", "disconnected") or availability ("drain",
    #: "pause"). A GPU of a node that is not ready counts in totals, never as free.
    node_state: str = "ready"

    @property
    def available(self) -> bool:
        return self.node_state == "ready"


def placement_constraint(model: str) -> str:
    """The Swarm placement constraint for nodes with GPUs of `model` (spaces are fine)."""
    return f"node.labels.{MODEL_LABEL}=={model}"


def schedulable(node: Mapping) -> bool:
    """Whether Swarm places new tasks on the node: state "ready" and availability "active"
    (a drained or paused node, and a down or unknown one, take none)."""
    state = (node.get("Status") or {}).get("State")
    availability = (node.get("Spec") or {}).get("Availability")
    return state == "ready" and availability == "active"


def node_state(node: Mapping) -> str:
    """ "ready" for a :func:`schedulable` node; else its state when that is not
    "ready" ("down", ...), else its availability ("drain", "pause")."""
    state = (node.get("Status") or {}).get("State") or "unknown"
    if state != "ready":
        return state
    availability = (node.get("Spec") or {}).get("Availability") or "unknown"
    return "ready" if availability == "active" else availability


def _gpu_uuids(resources: Iterable[Mapping] | None) -> list[str]:
    """The UUIDs in a list of generic resources (``NamedResourceSpec`` of our kind)."""
    uuids = []
    for resource in resources or ():
        named = resource.get("NamedResourceSpec") or {}
        if named.get("Kind") == GPU_RESOURCE_KIND and named.get("Value"):
            uuids.append(named["Value"])
    return uuids


def node_gpu_uuids(node: Mapping) -> list[str]:
    """The GPUs a node advertises (``Description.Resources.GenericResources``)."""
    resources = ((node.get("Description") or {}).get("Resources") or {}).get("GenericResources")
    return _gpu_uuids(resources)


def node_hostname(node: Mapping) -> str:
    return (node.get("Description") or {}).get("Hostname", "")


def node_hostnames(nodes_json: Iterable[Mapping]) -> dict[str, str]:
    """Node ID -> hostname, to name the node of a task (``NodeID``)."""
    return {node["ID"]: node_hostname(node) for node in nodes_json if "ID" in node}


def cluster_gpus(nodes_json: Iterable[Mapping], *, every_node: bool = False) -> list[ClusterGPU]:
    """The GPUs of the schedulable nodes, in the nodes' and their advertised order.

    With `every_node`, also those of the nodes Swarm places nothing on now (down,
    drained, paused: :attr:`ClusterGPU.node_state` says which), so a model whose
    only node is down is still known, counted and never free. A GPU that a ready
    node advertises too (a node that rejoined under a new ID) is listed once.
    """
    nodes_json = list(nodes_json)
    ready = [node for node in nodes_json if schedulable(node)]
    gpus = [gpu for node in ready for gpu in _node_gpus(node, "ready")]
    if every_node:
        seen = {gpu.uuid for gpu in gpus}
        for node in nodes_json:
            if not schedulable(node):
                for gpu in _node_gpus(node, node_state(node)):
                    if gpu.uuid not in seen:
                        seen.add(gpu.uuid)
                        gpus.append(gpu)
    return gpus


def _node_gpus(node: Mapping, state: str) -> list[ClusterGPU]:
    model = ((node.get("Spec") or {}).get("Labels") or {}).get(MODEL_LABEL, "")
    hostname = node_hostname(node)
    return [ClusterGPU(hostname, uuid, model, state) for uuid in node_gpu_uuids(node)]


def unavailable_note(gpus: Iterable[ClusterGPU], model: str | None = None) -> str:
    """Which nodes with GPUs (of `model`; any when None) Swarm places nothing on now,
    as a refusal's tail: `` (gpu-2 is down, gpu-5 is drained)``; "" when none."""
    states = {
        gpu.node: gpu.node_state
        for gpu in gpus
        if not gpu.available and (model is None or gpu.model == model)
    }
    if not states:
        return ""
    said = (f"{node} is {state_word(state)}" for node, state in sorted(states.items()))
    return " (" + ", ".join(said) + ")"


def state_word(state: str) -> str:
    """A :func:`node_state` as a message says it: "down", "drained", "paused", ..."""
    return {"drain": "drained", "pause": "paused"}.get(state, state)


def task_gpu_uuids(task: Mapping) -> list[str]:
    """The GPUs Swarm assigned to a task.

    Docker's API (1.41, engine 20.10) names the field ``GenericResources``;
    its reference calls it ``AssignedGenericResources``: either is read.
    """
    return _gpu_uuids(task.get("GenericResources") or task.get("AssignedGenericResources"))


def assigned_uuids(tasks_json: Iterable[Mapping]) -> set[str]:
    """The GPUs held by tasks that Swarm has assigned and that have not ended
    (:data:`HOLDING_STATES`, whatever their desired state: a task being shut
    down holds its GPUs until it has stopped)."""
    held = set()
    for task in tasks_json:
        if (task.get("Status") or {}).get("State") in HOLDING_STATES:
            held.update(task_gpu_uuids(task))
    return held


def free_by_model(
    gpus: Iterable[ClusterGPU], assigned: Iterable[str]
) -> dict[str, tuple[int, int, int]]:
    """Per model: (free GPUs, all GPUs, nodes with GPUs of that model); the GPUs of a
    node that is not ready count in all, never as free."""
    assigned = set(assigned)
    free: dict[str, int] = {}
    total: dict[str, int] = {}
    nodes: dict[str, set[str]] = {}
    for gpu in gpus:
        free[gpu.model] = free.get(gpu.model, 0) + (gpu.available and gpu.uuid not in assigned)
        total[gpu.model] = total.get(gpu.model, 0) + 1
        nodes.setdefault(gpu.model, set()).add(gpu.node)
    return {model: (free[model], total[model], len(nodes[model])) for model in total}


def free_on_nodes(
    gpus: Iterable[ClusterGPU], assigned: Iterable[str], model: str | None = None
) -> dict[str, int]:
    """Per node: how many GPUs (of `model`; any model when None) are free (none on a
    node that is not ready)."""
    assigned = set(assigned)
    free: dict[str, int] = {}
    for gpu in gpus:
        if model is None or gpu.model == model:
            free[gpu.node] = free.get(gpu.node, 0) + (gpu.available and gpu.uuid not in assigned)
    return free


def no_free_message(
    model: str | None, free: int, total: int, nodes: int, *, requested: int = 1, most: int = 0
) -> str:
    """The refusal of a start no node can take, in the one-host wording counted across
    the cluster: ``no free NVIDIA H100 80GB HBM3: 0 of 4 free on 2 nodes``.

    `model` None means any model ("GPU"). For a request of several GPUs, which
    must all be on one node, `most` is the most that one node has free.
    """
    what = model or "GPU"
    where = f"on {nodes} node" + ("" if nodes == 1 else "s")
    if requested == 1 or free == 0:
        return f"no free {what}: {free} of {total} free {where}"
    return (
        f"not enough free {what} on one node: {requested} requested, "
        f"{free} of {total} free {where} (at most {most} on one node)"
    )


def refusal(
    nodes_json: Iterable[Mapping],
    tasks_json: Iterable[Mapping],
    requested: int,
    model: str | None = None,
) -> str:
    """Why no node can take `requested` GPUs of `model` now; "" when one can.

    Swarm places a task's GPUs on one node, so the request fits when some
    schedulable node has that many free. (A start can still lose a race to
    another start between this check and Swarm's placement.) The GPUs of nodes
    that are down, drained or paused count in the total, never as free, and the
    message names those nodes.
    """
    if requested < 1:
        return ""
    gpus = [
        gpu
        for gpu in cluster_gpus(nodes_json, every_node=True)
        if model is None or gpu.model == model
    ]
    free_per_node = free_on_nodes(gpus, assigned_uuids(tasks_json))
    most = max(free_per_node.values(), default=0)
    if most >= requested:
        return ""
    message = no_free_message(
        model,
        sum(free_per_node.values()),
        len(gpus),
        len(free_per_node),
        requested=requested,
        most=most,
    )
    return message + unavailable_note(gpus, model)
