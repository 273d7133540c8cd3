"""GPUDockerSpawner: DockerSpawner that gives each server whole GPUs of its own."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import posixpath
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

import docker.errors
import jinja2
import sqlalchemy
from dockerspawner import DockerSpawner
from jupyterhub.traitlets import ByteSpecification
from jupyterhub.utils import random_port
from sqlalchemy.engine import make_url
from tornado import web
from traitlets import Bool, Dict, Int, List, Set, Unicode, default, validate

from . import labels, snapshots
from .allocation import NoFreeGPUs, choose_gpus
from .budgets import affordable_seconds, hourly_usage
from .choice import Choice, ChoiceError, parse_profiles, resolve_choice
from .clock import utcnow
from .container import (
    UNSAFE_SETTINGS,
    ContainerRefused,
    Hardening,
    check_allowed_names,
    check_container_user,
    container_labels,
    enforce_create_kwargs,
)
from .datasets import (
    FOLDER,
    DatasetError,
    Datasets,
    add_dataset_mounts,
    ensure_dataset_volume,
)
from .gpus import GPUInventory, Inventory, cuda_driver_problem
from .homes import (
    HOME,
    SNAPSHOT,
    HomeBusy,
    HomeError,
    HomeVolumes,
    Volume,
    ensure_home,
    inspect_volume,
)
from .identity import HubIdentity
from .ledger import Ledger, default_url
from .ledger.models import NAME_RULE, name_problem
from .network import DEFAULT_NETWORK, NetworkError, NotebookNetwork, ensure_network
from .policies import format_duration
from .pricing import Pricing
from .usage import spawn_prices

#: container states in which a container holds its GPUs
HOLDING_STATES = ("running", "paused", "restarting")
#: how held_gpus names the holder of a GPU that another hub's server holds:
#: "/hub/<id>/<user>/<server>" (a user name never holds "/", so no local owner starts so)
OTHER_HUB = "/hub/"

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
)


def spawn_error(status: int, message: str) -> web.HTTPError:
    """An HTTPError whose message the hub shows as it is, on the spawn page and in the API."""
    error = web.HTTPError(status, "%s", message)
    error.jupyterhub_message = message
    return error


@dataclass
class _Allocator:
    """Per process and Docker engine: the lock and the GPUs of spawns in progress."""

    lock: asyncio.Lock
    #: GPU UUID -> "user/server" of spawns that have chosen GPUs but may not have a container yet
    reserved: dict


_allocators: dict[str, _Allocator] = {}


class GPUDockerSpawner(DockerSpawner):
    """A DockerSpawner whose servers own whole GPUs, exclusively.

    The user picks a profile or a GPU count; the spawner picks free healthy
    GPUs, attaches exactly those with a Docker device request, and labels the
    container with them. Running containers' labels are the record of which
    GPU is taken, so the allocation survives a hub restart.
    """

    profile_list = List(
        Dict(),
        help="""
        Choices offered on the spawn page, modelled on KubeSpawner's.

        Each profile is a dict with ``display_name`` (required) and optionally
        ``slug`` (derived from the display name if absent), ``description``,
        ``default`` (True for the preselected one), ``gpus`` (whole GPUs, 0 for
        CPU only), ``gpu_model`` (e.g. ``"NVIDIA H100 80GB HBM3"``; any model
        if absent), ``cpu_limit`` (cores, e.g. ``8``), ``mem_limit`` (e.g.
        ``"64G"``), ``image`` and ``datasets`` (the names from
        ``c.Datasets.definitions`` it may mount, e.g. ``["imagenet"]``, ``[]``
        for none; all if absent). Users choose one with
        ``{"profile": "<slug>"}``. Empty: users choose a GPU count.
        """,
    ).tag(config=True)

    @validate("profile_list")
    def _check_profiles(self, proposal):
        parse_profiles(proposal.value)
        return proposal.value

    default_gpus = Int(
        0,
        min=0,
        help="GPUs for a server started with no choice and no profile_list (0: CPU only).",
    ).tag(config=True)

    max_gpus_per_user = Int(
        None,
        allow_none=True,
        min=0,
        help="""
        The most GPUs one user may hold at once, over all their named servers,
        e.g. ``2``. None: as many as the machine has.
        """,
    ).tag(config=True)

    shm_size = ByteSpecification(
        "1G",
        help="""
        Size of ``/dev/shm`` per server, e.g. ``"1G"`` or ``"16G"``.

        NCCL (multi-GPU) and PyTorch DataLoader workers exchange tensors through
        shared memory; Docker's default of 64 MiB makes them fail. A per-server
        size is used rather than ``ipc=host``, which would share the host's IPC
        namespace between users.
        """,
    ).tag(config=True)

    pids_limit = Int(
        4096,
        min=64,
        help="Most processes and threads per server (Docker's pids limit), e.g. 4096.",
    ).tag(config=True)

    ulimits = Dict(
        {"memlock": -1, "stack": 67108864},
        help="""
        Resource limits per server, name to value (soft = hard), as
        ``docker run --ulimit``. The defaults follow NCCL's and NVIDIA's
        advice for multi-GPU training: unlimited locked memory (-1) and a
        64 MiB stack. A Docker engine whose own hard limit is lower (some
        sandboxes) refuses to start containers above it: lower ``memlock``
        to that limit there.
        """,
    ).tag(config=True)

    container_user = Unicode(
        "1000:100",
        help="""
        ``uid:gid`` (or user name) the notebook runs as, e.g. ``"1000:100"``;
        never root. Refused: an empty user (the image's own, often root),
        ``root``, and any number equal to 0 (``"0"``, ``"00"``, ``"+0"``,
        ``"0:0"``). Prefer a numeric uid: a name that the image maps to uid 0
        cannot be checked. The default matches the shipped image's ``jovyan``.
        """,
    ).tag(config=True)

    @validate("container_user")
    def _check_user(self, proposal):
        return check_container_user(proposal.value)

    cap_add = List(
        Unicode(),
        help="""
        Linux capabilities given back to notebook containers by name, e.g.
        ``["CHOWN"]``; all others are dropped, and ``ALL`` is refused. Empty by
        default: a notebook started as a non-root user needs none. Each name
        here is the admin's opt-in for that capability.
        """,
    ).tag(config=True)

    @validate("cap_add")
    def _check_cap_add(self, proposal):
        if any(cap.strip().upper() in ("ALL", "CAP_ALL") for cap in proposal.value):
            raise ValueError("cap_add: 'ALL' is refused; name each capability, e.g. ['CHOWN']")
        return proposal.value

    allow_unsafe_settings = Set(
        Unicode(),
        help=f"""
        Container settings refused by default, allowed by name, e.g.
        ``{{"devices"}}`` to let ``extra_host_config`` add a host device.
        Each lets a notebook reach the host or other users' containers: use
        them on single-tenant hosts only. A start whose container asks for one
        that is not allowed fails with a message naming it. The names:
        {", ".join(f"``{name}``" for name in sorted(UNSAFE_SETTINGS))}.
        """,
    ).tag(config=True)

    @validate("allow_unsafe_settings")
    def _check_allow_unsafe(self, proposal):
        return set(check_allowed_names(proposal.value))

    ledger_url = Unicode(
        help="""
        The meter's ledger, read for budget checks before a start, e.g.
        ``postgresql+psycopg://jgm:secret@db/jgm``. Defaults to
        ``c.MeterService.db_url``, then ``$JUPYTER_GPU_METER_DB_URL``, then
        the meter's default SQLite file in the hub's working directory.
        """,
    ).tag(config=True)

    @default("ledger_url")
    def _ledger_url_default(self):
        return default_url(self.config)

    check_cuda_driver = Bool(
        True,
        help="""
        Before starting a GPU server, compare the image's CUDA version (its
        ``jupyter-gpu-meter.cuda-version`` label) with the host's NVIDIA driver
        and refuse the start with a clear message when they cannot work together.
        """,
    ).tag(config=True)

    @default("network_name")
    def _network_name_default(self):
        # a network of the notebooks' own, not the host's and not Docker's shared default
        return DEFAULT_NETWORK

    network_internal = Bool(
        False,
        help="""
        Create the notebooks' network (``network_name``, when it does not
        exist yet) as an internal one: notebooks reach the hub and nothing
        beyond the host, e.g. no package index. False (the default):
        notebooks reach the internet through the host, still not each other
        nor the host's loopback services. An existing network is used as it is.
        """,
    ).tag(config=True)

    @default("remove")
    def _remove_default(self):
        # Device requests are fixed when a container is created: a reused
        # container would keep the GPUs of its previous run.
        return True

    @default("ip")
    def _ip_default(self):
        # With host networking the notebook's port is on the host: keep it off other interfaces.
        # Otherwise listen on the container's own interfaces, reached through Docker's network.
        return "127.0.0.1" if self.network_name == "host" else "0.0.0.0"  # noqa: S104

    @default("use_internal_ip")
    def _use_internal_ip_default(self):
        # host networking has no ports to publish: the hub reaches the notebook directly
        return self.network_name != "bridge"

    @property
    def hub_id(self) -> str:
        """This hub's id (:class:`~jupyter_gpu_meter.identity.HubIdentity`), on every container."""
        if not hasattr(self, "_hub_id"):
            self._hub_id = HubIdentity(parent=self).hub_id
        return self._hub_id

    @default("options_form")
    def _options_form_default(self):
        return self._render_options_form

    @default("options_from_form")
    def _options_from_form_default(self):
        return self._options_from_form

    #: the GPUs of the current (or last) run
    gpu_uuids = List(Unicode())
    gpu_model = Unicode("")

    # --- the user's persistent home -----------------------------------------

    @property
    def home_volumes(self) -> HomeVolumes:
        """The persistent-home settings (``c.HomeVolumes``), shared with the meter."""
        if not hasattr(self, "_home_volumes"):
            self._home_volumes = HomeVolumes(parent=self)
        return self._home_volumes

    #: the home volume this run mounts ("" when homes are off)
    home_volume = Unicode("")

    async def _prepare_home(self) -> str:
        """The user's home volume, made on their first start; "" when homes are off."""
        homes = self.home_volumes
        if not homes.enabled:
            return ""
        name = homes.volume_name(self.user.name, self.hub_id)
        try:
            await self.docker("inspect_volume", name)
        except docker.errors.NotFound:
            # a new home is filled from the image: have the image first
            await self.pull_image(self.image)
        try:
            created = await asyncio.wrap_future(
                self.executor.submit(
                    ensure_home,
                    self.client,
                    name,
                    user=self.user.name,
                    hub_id=self.hub_id,
                    owner=self.container_user,
                    image=self.image,
                    mount_path=homes.mount_path,
                    driver=homes.driver,
                    driver_opts=homes.volume_options(self.user.name, self.hub_id),
                )
            )
        except HomeBusy:
            raise spawn_error(
                409,
                "your home is busy: a snapshot or restore of it is running; "
                "start again when it has finished",
            ) from None
        except HomeError as e:
            self.log.error("Home of %s: %s", self._owner, e)
            raise spawn_error(500, f"your home cannot be mounted: {e}") from None
        if created:
            self.log.info("Made the home volume %s of %s", name, self.user.name)
        return name

    async def _restore_home(self, snapshot_id: str = ""):
        """Finish an interrupted restore of the home; then restore `snapshot_id`, if asked.

        (:mod:`jupyter_gpu_meter.snapshots`; the copy runs in the executor.)
        """
        if not self.home_volume:
            if snapshot_id:
                raise spawn_error(400, "starting from a snapshot needs persistent homes: off here")
            return
        try:
            await asyncio.wrap_future(
                self.executor.submit(self._restore_home_blocking, snapshot_id)
            )
        except snapshots.SnapshotNotFound as e:
            raise spawn_error(400, str(e)) from None
        except snapshots.HomeInUse as e:
            raise spawn_error(409, f"cannot start from snapshot {snapshot_id}: {e}") from None
        except HomeBusy:
            raise spawn_error(
                409, "a restore of your home is in progress: start again when it is done"
            ) from None
        except HomeError as e:
            self.log.error("Restoring the home of %s: %s", self._owner, e)
            raise spawn_error(500, f"your home cannot be restored: {e}") from None
        if snapshot_id:
            self._forget_snapshot_option()

    def _restore_home_blocking(self, snapshot_id: str):
        api, image = self.client, self.home_volumes.helper_image
        snapshots.finish_interrupted_restore(api, self.home_volume, helper_image=image)
        if snapshot_id:
            found = snapshots.find_snapshot(
                api, snapshot_id, hub_id=self.hub_id, user=self.user.name
            )
            self.log.info("Restoring snapshot %s into %s", found.volume, self.home_volume)
            snapshots.restore_snapshot(
                api,
                found,
                self.home_volume,
                user=self.user.name,
                hub_id=self.hub_id,
                helper_image=image,
            )

    def _forget_snapshot_option(self):
        """Restore a snapshot once: the hub keeps ``user_options`` for the next start
        without options (an API call with no body, the admin panel's Start), which
        must not restore the snapshot again over the work done since."""
        self.user_options = {k: v for k, v in (self.user_options or {}).items() if k != "snapshot"}
        orm_spawner = self.orm_spawner
        if orm_spawner is None or "snapshot" not in (orm_spawner.user_options or {}):
            return
        orm_spawner.user_options = {
            k: v for k, v in orm_spawner.user_options.items() if k != "snapshot"
        }
        db = self.db or sqlalchemy.inspect(orm_spawner).session
        if db is not None:
            db.commit()

    async def _snapshot_choices(self) -> list:
        """The user's snapshots for the spawn form's "Start from" ([] when homes are off)."""
        if not self.home_volumes.enabled:
            return []
        return await asyncio.wrap_future(
            self.executor.submit(
                snapshots.list_snapshots, self.client, hub_id=self.hub_id, user=self.user.name
            )
        )

    @property
    def volume_binds(self):
        binds = super().volume_binds
        if self.home_volume:
            mount = self.home_volumes.mount_path
            taken = [
                source
                for source, bind in binds.items()
                if bind.get("bind", "").rstrip("/") == mount
            ]
            if taken:
                raise ContainerRefused(
                    f"c.DockerSpawner.volumes mounts {taken[0]} at {mount}, where the user's "
                    "home goes: mount it elsewhere, or set c.HomeVolumes.mount_path to another "
                    "folder, or turn homes off with c.HomeVolumes.enabled = False"
                )
            if self.home_volume in binds:
                raise ContainerRefused(
                    f"c.DockerSpawner.volumes mounts the user's home volume {self.home_volume} "
                    f"at {binds[self.home_volume].get('bind')}; it is mounted at {mount} "
                    "already: remove it from c.DockerSpawner.volumes"
                )
            # nocopy: the home was filled when it was made (homes.ensure_home)
            binds[self.home_volume] = {"bind": mount, "mode": "rw,nocopy"}
        return binds

    def _check_volume_owners(self, host_config) -> None:
        """Refuse mounting a home or snapshot volume that is not this user's (blocking).

        Named volumes come from the admin's ``volumes``/``extra_host_config``
        too: a template mistake must not hand one user another's files.
        """
        names = [
            str(bind).split(":", 1)[0]
            for bind in host_config.get("Binds") or []
            if not str(bind).startswith("/")
        ]
        names += [
            str(mount.get("Source") or "")
            for mount in host_config.get("Mounts") or []
            if isinstance(mount, dict) and str(mount.get("Type", "volume")).lower() == "volume"
        ]
        for name in filter(None, names):
            info = inspect_volume(self.client, name)
            if info is None:
                continue  # Docker makes it, empty and unlabelled
            volume = Volume.from_docker(info)
            if volume.kind in (HOME, SNAPSHOT) and (
                volume.user != self.user.name or volume.hub_id != self.hub_id
            ):
                raise ContainerRefused(
                    f"the volume {name} is the {volume.kind} of user {volume.user!r}"
                    f"{'' if volume.hub_id == self.hub_id else ' on another hub'}; "
                    f"it cannot be mounted into a server of {self.user.name!r}"
                )

    def _docker(self, method, *args, **kwargs):
        if method == "create_container":
            self._check_volume_owners(kwargs.get("host_config") or {})
        return super()._docker(method, *args, **kwargs)

    # --- what exists and what is taken -------------------------------------

    @property
    def inventory_source(self) -> GPUInventory:
        if not hasattr(self, "_inventory_source"):
            self._inventory_source = GPUInventory(parent=self)
        return self._inventory_source

    async def discover_gpus(self) -> Inventory:
        """The machine's GPUs (NVML, simulated or static), read off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, self.inventory_source.discover
        )

    def _allocator(self) -> _Allocator:
        key = str(self.client.base_url)
        if key not in _allocators:
            _allocators[key] = _Allocator(asyncio.Lock(), {})
        return _allocators[key]

    async def held_gpus(self) -> dict[str, str]:
        """GPU UUID -> "user/server" for every GPU held now, from Docker's labels;
        "/hub/<id>/user/server" where another hub's server on this engine holds it."""
        containers = await self.docker("containers", all=True, filters={"label": labels.MANAGED})
        held = {}
        for container in containers:
            if container.get("State") not in HOLDING_STATES:
                continue
            found = container.get("Labels") or {}
            owner = f"{found.get(labels.USER, '?')}/{found.get(labels.SERVER, '')}"
            if not labels.of_hub(found, self.hub_id):
                # another hub's server on this engine: its GPUs are taken all the same
                owner = f"{OTHER_HUB}{found.get(labels.HUB)}/{owner}"
            for uuid in labels.gpus_from_labels(found):
                held[uuid] = owner
        held.update(self._allocator().reserved)
        return held

    # --- choosing ----------------------------------------------------------

    @property
    def _owner(self) -> str:
        return f"{self.user.name}/{self.name}"

    def resolve_choice(self, inventory: Inventory) -> Choice:
        """The user's choice as a :class:`Choice`; a 400 that lists what is allowed if invalid."""
        models = {}
        for gpu in inventory.gpus:
            models[gpu.model] = models.get(gpu.model, 0) + 1
        try:
            return resolve_choice(
                self.user_options,
                profiles=parse_profiles(self.profile_list),
                models=models,
                default_gpus=self.default_gpus,
                max_gpus=self.max_gpus_per_user,
                datasets=list(self._datasets()),
            )
        except ChoiceError as e:
            raise spawn_error(400, str(e)) from None

    async def _check_driver(self, inventory: Inventory):
        if not (self.check_cuda_driver and inventory.driver_version):
            return
        image = await self.docker("inspect_image", self.image)
        cuda = ((image.get("Config") or {}).get("Labels") or {}).get(labels.CUDA_VERSION, "")
        problem = cuda_driver_problem(cuda, inventory.driver_version)
        if problem:
            raise spawn_error(500, f"image {self.image}: {problem}")

    async def _allocate(self, choice: Choice, inventory: Inventory) -> tuple:
        allocator = self._allocator()
        async with allocator.lock:
            held = await self.held_gpus()
            if self.max_gpus_per_user is not None and choice.gpus:
                mine = sum(
                    1
                    for owner in held.values()
                    if owner.split("/", 1)[0] == self.user.name and owner != self._owner
                )
                if mine + choice.gpus > self.max_gpus_per_user:
                    raise spawn_error(
                        400,
                        f"you hold {mine} GPU(s) in other servers and asked for {choice.gpus}; "
                        f"at most {self.max_gpus_per_user} per user",
                    )
            try:
                gpus = choose_gpus(
                    inventory.gpus, held, choice.gpus, choice.gpu_model, inventory.topology
                )
            except NoFreeGPUs as e:
                raise spawn_error(503, str(e) + _other_hubs_note(e, inventory, held)) from None
            for gpu in gpus:
                allocator.reserved[gpu.uuid] = self._owner
        return gpus

    def _release(self, gpus):
        reserved = self._allocator().reserved
        for gpu in gpus:
            if reserved.get(gpu.uuid) == self._owner:
                del reserved[gpu.uuid]

    # --- datasets ----------------------------------------------------------

    #: the datasets this run mounts (set by each start before its container is made)
    _chosen_datasets = ()

    def _datasets(self) -> dict:
        """Dataset name -> :class:`~jupyter_gpu_meter.datasets.Dataset`, from ``c.Datasets``.

        A bad definition is the admin's: a 500 that the hub shows as it is.
        """
        try:
            return Datasets(parent=self).by_name()
        except ValueError as e:
            raise spawn_error(500, str(e)) from None

    async def _prepare_datasets(self, names) -> None:
        """Make the chosen datasets' volumes where the hub makes them; refuse unusable ones."""
        by_name = self._datasets()
        chosen = [by_name[name] for name in names]
        try:
            for dataset in chosen:
                await asyncio.wrap_future(
                    self.executor.submit(ensure_dataset_volume, self.client, dataset)
                )
        except DatasetError as e:
            self.log.error("Datasets of %s: %s", self._owner, e)
            raise spawn_error(500, str(e)) from None
        self._chosen_datasets = tuple(chosen)

    def _with_datasets(self, host_config) -> dict:
        """The container's host config with this run's datasets mounted read-only."""
        return add_dataset_mounts(
            host_config or {},
            self._chosen_datasets,
            self.home_volumes.mount_path,
        )

    # --- starting ----------------------------------------------------------

    def check_names(self):
        """Refuse (400) a user or server name the meter's ledger could not record.

        Checked before anything is allocated or created: a server the ledger
        cannot record would run unbilled.
        """
        for what, name in (("user name", self.user.name), ("server name", self.name)):
            problem = name_problem(name)
            if problem:
                shown = repr(name[:40]) + ("…" if len(name) > 40 else "")
                fix = "ask an admin to rename the user" if what == "user name" else "rename it"
                raise spawn_error(
                    400,
                    f"the {what} {shown} cannot be metered: {problem}; allowed: {NAME_RULE}; {fix}",
                )

    async def start(self):
        self.check_names()
        inventory = await self.discover_gpus()
        choice = self.resolve_choice(inventory)
        if choice.image:
            self.image = choice.image
        if choice.cpu_limit is not None:
            self.cpu_limit = choice.cpu_limit
        if choice.mem_limit is not None:
            self.mem_limit = choice.mem_limit
        if choice.gpus:
            await self._check_driver(inventory)
        self.home_volume = await self._prepare_home()
        await self._prepare_datasets(choice.datasets)
        gpus = await self._allocate(choice, inventory)
        try:
            self.gpu_uuids = [gpu.uuid for gpu in gpus]
            self.gpu_model = gpus[0].model if gpus else ""
            self._profile = choice.profile
            self.log.info(
                "Server %s gets %s",
                self._owner,
                ", ".join(f"GPU {gpu.index} ({gpu.uuid})" for gpu in gpus) or "no GPU",
            )
            await self._check_budget(len(gpus))
            if self.network_name == "host":
                _warn_host_network(self.log)
                self.port = random_port()
            else:
                await self._ensure_network()
            # last, when nothing else can refuse the start: a refused one leaves the home alone
            await self._restore_home(choice.snapshot)
            if not self.remove:
                await self._remove_kept_container()
            return await super().start()
        finally:
            # From here on the running container's labels hold the GPUs.
            self._release(gpus)

    async def _ensure_network(self) -> NotebookNetwork | None:
        """The notebooks' network, created if missing; refuse a start notebooks cannot finish.

        DockerSpawner's own ``bridge`` network is used as it is (ports published
        on the host). Any other is created with traffic between containers off.
        """
        if self.network_name in ("bridge", "none"):
            return None
        try:
            network = await asyncio.wrap_future(
                self.executor.submit(
                    ensure_network, self.client, self.network_name, internal=self.network_internal
                )
            )
        except NetworkError as e:
            raise spawn_error(500, str(e)) from None
        if network.icc and not getattr(self, "_warned_icc", False):
            self._warned_icc = True
            self.log.warning(
                "Docker network %s lets containers reach each other (created without %s=false): "
                "one user's notebook can reach another's",
                network.name,
                "com.docker.network.bridge.enable_icc",
            )
        api_url = self.hub_connect_url or self.hub.api_url
        if _is_loopback(urlparse(api_url).hostname or ""):
            raise spawn_error(
                500,
                f"the hub's API is at {api_url}, which notebooks on the Docker network "
                f"{network.name} cannot reach: let the hub listen on the network's gateway, "
                f"c.JupyterHub.hub_ip = {network.gateway!r} "
                "(jupyter_gpu_meter.hubconfig.setup_network(c) does)",
            )
        return network

    def _budget_status(self):
        """The user's budget status from the ledger (blocking); None without a budget."""
        url = make_url(self.ledger_url)
        if url.get_backend_name() == "sqlite" and not os.path.exists(url.database or ""):
            return None  # no meter has run yet: no budgets either
        with Ledger(self.ledger_url) as ledger:
            groups = [group.name for group in self.user.groups]
            return ledger.user_budget_status(self.user.name, groups, utcnow())

    async def _budget_left(self) -> str | None:
        try:
            status = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._budget_status
            )
        except Exception:
            self.log.exception("Reading the budget of %s failed", self._owner)
            return None
        if status is None:
            return None
        places = Decimal("0.01")
        return (
            f"{status.remaining.quantize(places)} of {status.limit.quantize(places)} "
            f"{status.unit_label} (since {status.period_start:%b %-d}, UTC)"
        )

    async def _check_budget(self, gpu_count: int):
        """Refuse a start the user's remaining budget cannot pay for a minimum time."""
        from .service.policy_runner import Policies

        try:
            status = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._budget_status
            )
        except Exception:
            # fail open: the meter's budget policy still stops the server later
            self.log.exception("Budget check for %s failed; starting anyway", self._owner)
            return
        if status is None:
            return
        price = Pricing(parent=self).snapshot(self.gpu_model, gpu_count)
        seconds = affordable_seconds(status, hourly_usage(status, price))
        if seconds is None:
            return  # this server uses nothing of that budget
        minimum = Policies(parent=self).budget_minimum_start
        if status.exhausted or seconds < max(minimum, 1):
            left = f"{status.remaining.quantize(Decimal('0.01'))} {status.unit_label}"
            what = f"{gpu_count} × {self.gpu_model}" if gpu_count else "a CPU-only server"
            raise spawn_error(
                403,
                f"your budget ({status.scope} {status.name}) has {left} left this period: "
                f"{format_duration(timedelta(seconds=seconds))} of {what}; "
                f"a start needs at least {format_duration(timedelta(seconds=minimum))}",
            )

    async def _remove_kept_container(self):
        """Never restart a kept container: each run gets a new one.

        Docker fixes a container's GPUs when it is created, and the meter
        records one session per container, so a restarted container would keep
        stale GPUs or go unmetered. ``remove = False`` only keeps a stopped
        container around (for ``docker logs``) until the server starts again.
        """
        if await self.get_object() is not None:
            self.log.info("Removing kept container %s before a new run", self.object_name)
            await self.remove_object()

    async def create_object(self):
        try:
            return await super().create_object()
        except ContainerRefused as e:
            # the admin's configuration, not the user's choice: a 500 the hub shows as it is
            self.log.error("Refused to create %s: %s", self.object_name, e)
            raise spawn_error(500, str(e)) from None

    def docker(self, method, *args, **kwargs):
        if method == "create_container":
            kwargs["host_config"] = self._with_datasets(kwargs.get("host_config"))
            kwargs = enforce_create_kwargs(
                kwargs,
                gpu_uuids=self.gpu_uuids,
                container_labels={
                    **container_labels(
                        user=self.user.name,
                        server=self.name,
                        gpu_uuids=self.gpu_uuids,
                        gpu_model=self.gpu_model,
                        profile=getattr(self, "_profile", ""),
                        hub_id=self.hub_id,
                    ),
                    # the price in force now travels with the container to the meter
                    **Pricing(parent=self)
                    .snapshot(self.gpu_model, len(self.gpu_uuids))
                    .to_labels(),
                },
                hardening=Hardening(
                    user=self.container_user,
                    cap_add=tuple(self.cap_add),
                    pids_limit=self.pids_limit,
                    shm_size_bytes=self.shm_size,
                    ulimits=dict(self.ulimits),
                    allow_unsafe=frozenset(self.allow_unsafe_settings),
                    # every dataset's volume, chosen or not: never writable
                    read_only_volumes=frozenset(
                        dataset.volume for dataset in self._datasets().values()
                    ),
                ),
            )
        return super().docker(method, *args, **kwargs)

    async def get_ip_and_port(self):
        if self.network_name == "host":
            return self.ip, self.port
        return await super().get_ip_and_port()

    def get_state(self):
        state = super().get_state()
        if self.gpu_uuids:
            state["gpu_uuids"] = list(self.gpu_uuids)
            state["gpu_model"] = self.gpu_model
        return state

    def load_state(self, state):
        super().load_state(state)
        self.gpu_uuids = state.get("gpu_uuids", [])
        self.gpu_model = state.get("gpu_model", "")

    def clear_state(self):
        super().clear_state()
        self.gpu_uuids = []
        self.gpu_model = ""

    # --- the spawn form ----------------------------------------------------

    async def _render_options_form(self, spawner=None):
        inventory = await self.discover_gpus()
        held = await self.held_gpus()
        models = {}
        for gpu in inventory.gpus:
            total, free = models.get(gpu.model, (0, 0))
            models[gpu.model] = (total + 1, free + (gpu.healthy and gpu.uuid not in held))
        profiles = parse_profiles(self.profile_list)
        chosen = (self.user_options or {}).get("profile") or next(
            (p.slug for p in profiles if p.default), profiles[0].slug if profiles else ""
        )
        return _templates.get_template("options_form.html").render(
            profiles=profiles,
            chosen=chosen,
            models=models,
            prices=spawn_prices(profiles, list(models), Pricing(parent=self)),
            # the user's remaining budget as text ("12.50 of 50.00 USD"); None: no budget
            budget_left=await self._budget_left(),
            only_model=next(iter(models)) if len(models) == 1 else None,
            free_any=sum(free for _, free in models.values()),
            total_any=len(inventory.gpus),
            limit=min(
                max((total for total, _ in models.values()), default=0),
                self.max_gpus_per_user if self.max_gpus_per_user is not None else 1 << 30,
            ),
            default_gpus=self.default_gpus,
            datasets=list(self._datasets().values()),
            datasets_folder=posixpath.join(self.home_volumes.mount_path, FOLDER),
            chosen_datasets=(self.user_options or {}).get("datasets") or [],
            snapshots=await self._snapshot_choices(),
        )

    @staticmethod
    def _options_from_form(formdata):
        def first(key):
            return (formdata.get(key) or [""])[0].strip()

        # ticked dataset checkboxes, each posted as datasets=<name>
        datasets = [name.strip() for name in formdata.get("datasets") or [] if name.strip()]
        if first("profile"):
            options = {"profile": first("profile")}
        else:
            options = {"gpus": first("gpus")}
            if first("gpu_model"):
                options["gpu_model"] = first("gpu_model")
        if first("snapshot"):
            options["snapshot"] = first("snapshot")
        if datasets:
            options["datasets"] = datasets
        return options


_host_network_warned = False


def _warn_host_network(log) -> None:
    """Once per hub: host networking is for one tenant only."""
    global _host_network_warned
    if not _host_network_warned:
        _host_network_warned = True
        log.warning(
            "GPUDockerSpawner.network_name = 'host': every notebook shares the host's network, "
            "reaches whatever listens on its loopback (the meter, the proxy's API, databases) "
            "and other users' notebooks. Use it only where all users are trusted alike."
        )


def _is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is the loopback interface of whoever connects."""
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _other_hubs_note(error: NoFreeGPUs, inventory: Inventory, held: dict) -> str:
    """ "(2 held by another hub's servers on this Docker engine)" where that is so."""
    kind = {gpu.uuid for gpu in inventory.gpus if error.model in (None, gpu.model)}
    others = sum(1 for uuid, owner in held.items() if uuid in kind and owner.startswith(OTHER_HUB))
    if not others:
        return ""
    return f" ({others} held by another hub's servers on this Docker engine)"
