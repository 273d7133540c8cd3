"""GPUSwarmSpawner: the GPU spawner on a Docker Swarm cluster, each server a service.

It is :class:`~jupyter_gpu_meter.GPUDockerSpawner` with DockerSpawner's
``SwarmSpawner`` underneath (``class GPUSwarmSpawner(GPUDockerSpawner,
SwarmSpawner)``): the same ``user_options``, profiles, validation
(:meth:`~jupyter_gpu_meter.GPUDockerSpawner.resolve_for_models`), labels,
environment, images, budget check and spawn form, and SwarmSpawner's services,
tasks and polling. Swarm picks the node and the GPUs, exclusively: the GPU count
is a generic-resource reservation, the model a placement constraint
(:mod:`~jupyter_gpu_meter.swarm_spec`).

A start: check names, read the cluster (nodes and running tasks,
:mod:`jupyter_gpu_meter.cluster`), resolve the choice against the most GPUs of
each model on one node, refuse at once (503) when no node has enough free,
check the budget, create the service, wait for its task. A task still unplaced
after :attr:`GPUSwarmSpawner.pending_timeout` (another start won the race) fails
the start with the same message, and the service is removed; so does a task
whose node goes down (or is drained) before it runs, as soon as the manager
says so, instead of waiting "assigned" until the hub's ``start_timeout``. The
GPUs of a node that is down, drained or paused count in the cluster's totals,
never as free: a model whose only node is down is refused with "no free …: 0 of
2 free on 1 node (gpu-2 is down)", not as an unknown model. Once running, the
task's node and GPUs are logged and kept in the spawner's state.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar
from urllib.parse import urlparse

import docker.errors
from dockerspawner import DockerSpawner, SwarmSpawner
from traitlets import Bool, Float, Unicode, default, validate

from . import cluster, labels
from .allocation import too_many_message
from .choice import Choice
from .container import ContainerRefused
from .gpus import GPU, Inventory
from .spawner import GPUDockerSpawner
from .spawner_checks import _is_loopback, spawn_error
from .swarm_spec import (
    GPU_COUNT,
    ClusterFull,
    TaskOutcome,
    enforce_service_kwargs,
    model_limits,
    place,
    published_port,
    task_outcome,
)

__all__ = ["GPUSwarmSpawner"]

#: node states (:func:`~jupyter_gpu_meter.cluster.node_state`) in which a task Swarm
#: placed there will not run: the start gives up. ("unknown" passes: a manager says it
#: of every node for a few seconds after a leader election.)
GIVE_UP_STATES = frozenset({"down", "disconnected", "drain"})
#: a failed task's node in any of these states: the node failed the start, not the server
NOT_READY = GIVE_UP_STATES | {"unknown", "pause"}
#: seconds between two looks at the node of a task waiting to run
NODE_CHECK_INTERVAL = 1.0


class GPUSwarmSpawner(GPUDockerSpawner, SwarmSpawner):
    """A GPUDockerSpawner whose servers are Swarm services placed by Swarm on a GPU node.

    Point it at a Swarm manager (``DOCKER_HOST`` or ``c.GPUSwarmSpawner.client_kwargs``).
    Each node advertises its GPUs as generic resources ``NVIDIA-GPU=<uuid>`` and its
    model as the node label ``jupyter-gpu-meter.gpu-model``
    (``jupyter-gpu-meter node-config``). Homes, datasets and the admin's own
    templates live on one host's disk: they are off here (see the reference).
    """

    pending_timeout = Float(
        10,
        min=0.5,
        help="""
        Seconds a server's task may wait for a node before the start fails with
        "no free <model>: … free on <n> nodes" and its service is removed, e.g.
        ``10``. A start is refused at once when the cluster has no room; this
        bounds the rare start that loses a race for the last GPU.
        """,
    ).tag(config=True)

    publish_mode = Unicode(
        "host",
        help="""
        How the notebook's port reaches the hub: ``"host"`` (the default) publishes
        it on the task's node only, at a port Docker picks, and the hub connects to
        that node's address; ``"ingress"`` publishes it through Swarm's routing mesh
        on every node (every notebook then shares the ingress network).
        """,
    ).tag(config=True)

    pull_on_nodes = Bool(
        True,
        help="""
        Whether a node asks the image's registry for it before each start (Docker's
        way, right where nodes pull from a registry). ``False`` for images loaded
        onto every node (``docker load``, no registry): the service names the
        image by its ID on the manager, and a node starts it at once instead of
        waiting for a registry it cannot reach (about 20 s).
        """,
    ).tag(config=True)

    @validate("publish_mode")
    def _check_publish_mode(self, proposal):
        if proposal.value not in ("host", "ingress"):
            raise ValueError(
                f"publish_mode: {proposal.value!r}; allowed: 'host' (the default) or 'ingress'"
            )
        return proposal.value

    #: manager URL -> "user/server" -> (model, count) of this process's starts whose task
    #: Swarm has not placed yet: concurrent starts count them, so they do not all ask for
    #: the same last GPUs (and wait out pending_timeout) while other nodes have room
    _placing: ClassVar[dict[str, dict[str, tuple[str, int]]]] = {}

    #: the node the current (or last) run's task runs on (its hostname), "" before
    node = Unicode("")
    #: that node's address, where the hub reaches the notebook's published port
    node_address = Unicode("")
    _requested_gpus = 0

    @default("network_name")
    def _network_name_default(self):
        # no notebook network of our own: the port is published through the routing mesh
        return ""

    @default("use_internal_ip")
    def _use_internal_ip_default(self):
        return False

    @property
    def gpu_count(self) -> int:
        return len(self.gpu_uuids) or self._requested_gpus

    # --- what lives on one host's disk: off ---------------------------------

    @property
    def home_volumes(self):
        homes = super().home_volumes
        if homes.enabled:
            self.log.warning(
                "GPUSwarmSpawner: persistent homes (c.HomeVolumes.enabled) are not available "
                "on a Swarm cluster yet: servers start without them"
            )
            homes.enabled = False
        return homes

    def _datasets(self) -> dict:
        return {}  # a dataset's volume is on one host: none is offered on a cluster

    async def available_templates(self):
        # the image's own templates only: the admin's are host folders of the hub's machine
        found = await super().available_templates()
        return {slug: template for slug, template in found.items() if not template.source}

    # --- the cluster ---------------------------------------------------------

    async def read_cluster(self) -> tuple[list, set[str]]:
        """Every node's GPUs (``ClusterGPU``: those of a node that is down, drained or
        paused are never free) and the UUIDs running tasks hold, from the manager."""
        nodes = await self.docker("nodes")
        tasks = await self.docker("tasks")  # a task shutting down holds its GPUs until stopped
        return cluster.cluster_gpus(nodes, every_node=True), cluster.assigned_uuids(tasks)

    async def discover_gpus(self) -> Inventory:
        """Every GPU of the cluster's nodes (for the spawn form's counts)."""
        gpus, _ = await self.read_cluster()
        return Inventory(
            gpus=tuple(GPU(gpu.uuid, index, gpu.model) for index, gpu in enumerate(gpus)),
            source="swarm",
        )

    async def held_gpus(self) -> dict[str, str]:
        """The GPUs tasks hold, and those of nodes Swarm places nothing on: none is free."""
        gpus, assigned = await self.read_cluster()
        held = dict.fromkeys(assigned, "")
        held.update(
            (gpu.uuid, f"node {gpu.node} is {gpu.node_state}") for gpu in gpus if not gpu.available
        )
        return held

    async def _users_other_gpus(self) -> int:
        """GPUs the user's other servers of this hub asked for (their services' labels)."""
        services = await self.docker(
            "services",
            filters={"label": [f"{labels.HUB}={self.hub_id}", f"{labels.USER}={self.user.name}"]},
        )
        return sum(
            int((service.get("Spec") or {}).get("Labels", {}).get(GPU_COUNT) or 0)
            for service in services
            if (service.get("Spec") or {}).get("Name") != self.object_name
        )

    # --- starting --------------------------------------------------------------

    async def start(self):
        self.check_names()
        budget = asyncio.ensure_future(self._budget_status())
        gpus, assigned = await self.read_cluster()
        self._offered_templates = await self.available_templates()
        choice = self.choose(gpus, assigned, self._offered_templates)
        return await self.start_chosen(choice, budget)

    async def start_chosen(self, choice: Choice, budget=None):
        """The rest of a start once :meth:`choose` has placed `choice`: the checks, the
        service, its task. `budget`: the pending read of the user's budget status (None:
        no check). The reservation :meth:`choose` made ends with it."""
        try:
            await self._restore_home(choice.snapshot)  # homes are off: a snapshot is refused
            if choice.gpus and self.max_gpus_per_user is not None:
                mine = await self._users_other_gpus()
                if mine + choice.gpus > self.max_gpus_per_user:
                    raise spawn_error(
                        400, too_many_message(mine, choice.gpus, self.max_gpus_per_user)
                    )
            await self._check_budget(None if budget is None else await budget)
            self._ulimits = dict(self.ulimits)
            self._image_ref = self.image if self.pull_on_nodes else await self._image_id()
            self._check_hub_reachable()
            # DockerSpawner's start: a leftover service removed, ours created, its task awaited
            return await DockerSpawner.start(self)
        finally:
            self._placed()

    def choose(self, gpus: list, assigned: set[str], templates=()) -> Choice:
        """Resolve and apply the user's choice against the cluster's `gpus` (``ClusterGPU``)
        and the `assigned` UUIDs: a 400 that lists what is allowed, or a 503 counted across
        the cluster when no node has room now. Sets the model Swarm is asked for."""
        choice = self.apply_choice(self.resolve_for_models(model_limits(gpus), templates))
        placing = self._placing.setdefault(str(self.client.base_url), {})
        placing.pop(self._owner, None)
        try:
            model = place(gpus, assigned, choice.gpus, choice.gpu_model, placing.values())
        except ClusterFull as e:
            raise spawn_error(503, str(e)) from None
        self.gpu_uuids, self.gpu_model, self.node, self.node_address = [], model or "", "", ""
        self._requested_gpus = choice.gpus
        if model:  # held for this start until Swarm has placed its task (or it failed)
            placing[self._owner] = (model, choice.gpus)
        return choice

    def _placed(self):
        """This start's task is placed, or the start failed: its reservation ends."""
        self._placing.get(str(self.client.base_url), {}).pop(self._owner, None)

    async def _image_id(self) -> str:
        """The ID of :attr:`image` on the manager, which nodes find without a registry."""
        try:
            return (await self.docker("inspect_image", self.image))["Id"]
        except docker.errors.ImageNotFound:
            raise spawn_error(
                500,
                f"image {self.image} is not on the Swarm manager; with "
                "c.GPUSwarmSpawner.pull_on_nodes = False, load it onto every node first",
            ) from None

    def _check_hub_reachable(self):
        api_url = self.hub_connect_url or self.hub.api_url
        if _is_loopback(urlparse(api_url).hostname or ""):
            raise spawn_error(
                500,
                f"the hub's API is at {api_url}, which notebooks on the cluster's nodes cannot "
                "reach: set c.JupyterHub.hub_connect_ip to an address of the hub's machine that "
                "the nodes reach (and c.JupyterHub.hub_ip to it, or to '0.0.0.0')",
            )

    @property
    def mounts(self):
        # SwarmSpawner makes every volume a bind: a named volume is a volume
        found = []
        for mount in super().mounts:
            if not str(mount.get("Source", "")).startswith("/"):
                mount = {**mount, "Type": "volume"}
            found.append(mount)
        return found

    async def create_object(self):
        try:
            # SwarmSpawner's (the admin's extra_*_spec included); SSH keys are not written
            # into a service: the meter writes them when it sees the container start
            return await SwarmSpawner.create_object(self)
        except ContainerRefused as e:
            self.log.error("Refused to create %s: %s", self.object_name, e)
            raise spawn_error(500, str(e)) from None

    def docker(self, method, *args, **kwargs):
        if method == "create_service":
            kwargs = self.service_kwargs(kwargs)
        return super().docker(method, *args, **kwargs)

    def service_kwargs(self, create_kwargs) -> dict:
        """SwarmSpawner's ``create_service`` kwargs with this run's GPUs, labels and
        hardening enforced (:func:`~jupyter_gpu_meter.swarm_spec.enforce_service_kwargs`)."""
        request = dict(create_kwargs)
        image = getattr(self, "_image_ref", "") or self.image
        request["task_template"] = {
            **request["task_template"],
            "ContainerSpec": {**request["task_template"]["ContainerSpec"], "Image": image},
        }
        return enforce_service_kwargs(
            request,
            gpu_count=self._requested_gpus,
            gpu_model=self.gpu_model,
            # Swarm picks the GPUs: the task's env says which
            container_labels=self.run_labels(()),
            hardening=self.hardening(),
            port=self.port,
            publish_mode=self.publish_mode,
        )

    async def start_object(self):
        """Wait for the task to run: record its node and GPUs; or fail the start, leaving
        no service behind, when it fails, finds no node within :attr:`pending_timeout`,
        or its node goes down (or is drained) before it runs."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.pending_timeout
        delay = 0.05
        placed = False  # Swarm gave the task a node (a task taken off it fails the start)
        node_checked = 0.0
        while True:
            task = await self.get_task()
            outcome = task_outcome(task) if task else TaskOutcome("failed", message="no task")
            if outcome.node_id:
                self._placed()  # its GPUs now count as the task's (cluster.assigned_uuids)
            if outcome.state == "running":
                return await self._record_placement(outcome)
            if outcome.state == "failed":
                if outcome.node_id:  # Swarm fails a task whose node went down: a 503 then
                    await self._check_node_alive(outcome.node_id, NOT_READY)
                await self._give_up()
                raise spawn_error(500, f"the server's task failed before it ran: {outcome.message}")
            if outcome.node_id:
                placed = True
                if loop.time() - node_checked >= NODE_CHECK_INTERVAL:
                    node_checked = loop.time()
                    await self._check_node_alive(outcome.node_id)
            elif placed or loop.time() > deadline:
                # no node (another start won the race), or Swarm took the task off its node
                await self._give_up()
                raise spawn_error(503, await self._no_room_message(outcome))
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    async def _check_node_alive(self, node_id: str, states=GIVE_UP_STATES):
        """Fail the start (503, service removed) when the task's node is in `states`
        (down, drained): Swarm would keep the task "assigned" there until the hub's
        start_timeout, or fail it ("assigned node no longer meets constraints")."""
        node = await self.docker("inspect_node", node_id)
        state = cluster.node_state(node)
        if state in states:
            await self._give_up()
            gone = cluster.state_word(state)
            raise spawn_error(
                503,
                f"the node Swarm placed this server on, {cluster.node_hostname(node)}, is "
                f"{gone}: start it again (the GPUs of a node that is {gone} are not offered)",
            )

    async def _no_room_message(self, outcome: TaskOutcome) -> str:
        gpus, assigned = await self.read_cluster()
        try:
            others = self._placing.get(str(self.client.base_url), {})
            reserved = [held for owner, held in others.items() if owner != self._owner]
            place(gpus, assigned, self._requested_gpus, self.gpu_model or None, reserved)
        except ClusterFull as e:
            return str(e)
        # room now (a GPU freed meanwhile): say what Swarm said while the task waited
        return (
            f"no node took this server within {self.pending_timeout:g} s "
            f"({outcome.message or 'pending'}); start it again"
        )

    async def _give_up(self):
        self.log.info("Removing service %s: its task did not run", self.object_name)
        await self.remove_object()
        self.object_id = ""

    async def _record_placement(self, outcome: TaskOutcome):
        node = await self.docker("inspect_node", outcome.node_id)
        self.node = (node.get("Description") or {}).get("Hostname", "")
        self.node_address = (node.get("Status") or {}).get("Addr", "")
        self.gpu_uuids = list(outcome.gpu_uuids)
        self.log.info(
            "Server %s runs on node %s (%s) with %s",
            self._owner,
            self.node,
            self.node_address,
            ", ".join(self.gpu_uuids) or "no GPU",
        )

    async def remove_object(self):
        try:
            await super().remove_object()
        except docker.errors.NotFound:
            self.log.debug("Service %s is gone already", self.object_name)

    async def get_ip_and_port(self):
        """The task's node's address and the port published for the notebook."""
        task, service = await self.get_task(), await self.get_object()
        port = published_port(task or {}, service or {}, self.port)
        if port is not None:
            return self.node_address, port
        raise RuntimeError(f"service {self.object_name} publishes no port for {self.port}")

    def get_state(self):
        state = super().get_state()
        if self.node:
            state.update(node=self.node, node_address=self.node_address)
            state.update(gpu_uuids=list(self.gpu_uuids), gpu_model=self.gpu_model)
        return state

    def load_state(self, state):
        super().load_state(state)
        self.node = state.get("node", "")
        self.node_address = state.get("node_address", "")

    def clear_state(self):
        super().clear_state()
        self.node = self.node_address = ""
