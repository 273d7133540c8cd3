"""GPUDockerSpawner: DockerSpawner that gives each server whole GPUs of its own.

A start: check names, discover GPUs, resolve the user's choice, check the driver,
prepare the home and datasets (:mod:`~jupyter_gpu_meter.spawner_homes`), allocate
GPUs (:class:`~jupyter_gpu_meter.allocation.Allocator`), check the budget
(:mod:`~jupyter_gpu_meter.spawner_budget`), the network
(:mod:`~jupyter_gpu_meter.spawner_checks`), restore a snapshot, create the container
(with the user's SSH keys: :mod:`~jupyter_gpu_meter.spawner_ssh`). Docker calls run
on DockerSpawner's executor; GPU discovery and ledger reads on the spawner's own
(:attr:`GPUDockerSpawner.meter_executor`): a slow ledger never holds up Docker calls.
"""

from __future__ import annotations

import asyncio
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from dockerspawner import DockerSpawner
from traitlets import Dict, Int, List, Unicode, default, validate

from . import labels
from .allocation import Allocator, NoFreeGPUs, TooManyGPUs, held_by_containers
from .budgets import Budgets
from .choice import Choice, ChoiceError, parse_profiles, resolve_choice
from .clock import utcnow
from .container import ContainerRefused, Hardening, container_labels, enforce_create_kwargs
from .datasets import FOLDER
from .gpus import GPUInventory, Inventory
from .identity import HubIdentity
from .images import display_name, normalize_allowed, offered, offered_per_profile
from .ledger import default_url
from .network import DEFAULT_NETWORK
from .pricing import PriceSnapshot, Pricing
from .spawn_form import model_counts, options_from_form, render_spawn_form, spawn_prices
from .spawner_budget import budget_left, read_budget_status, refusal
from .spawner_checks import StartChecks, spawn_error
from .spawner_homes import HomesMixin
from .spawner_meter import MeterURLMixin, StopRecordMixin
from .spawner_ssh import SSHMixin
from .spawner_templates import TemplatesMixin

__all__ = ["GPUDockerSpawner", "spawn_error"]


class GPUDockerSpawner(
    MeterURLMixin,
    StopRecordMixin,
    HomesMixin,
    StartChecks,
    TemplatesMixin,
    SSHMixin,
    DockerSpawner,
):
    """A DockerSpawner whose servers own whole GPUs, exclusively.

    The user picks a profile or a GPU count; the spawner picks free healthy
    GPUs, attaches exactly those with a Docker device request, and labels the
    container with them. Running containers' labels are the record of which
    GPU is taken, so the allocation survives a hub restart.
    """

    #: GPU discovery and ledger reads, for every server of the hub: never on
    #: DockerSpawner's single shared executor, where they would queue Docker calls
    meter_executor: ClassVar[ThreadPoolExecutor] = ThreadPoolExecutor(
        4, thread_name_prefix="GPUDockerSpawner-meter"
    )

    profile_list = List(
        Dict(),
        help="""
        Choices offered on the spawn page, modelled on KubeSpawner's.

        Each profile is a dict with ``display_name`` (required) and optionally
        ``slug`` (derived from the display name if absent), ``description``,
        ``default`` (True for the preselected one), ``gpus`` (whole GPUs, 0 for
        CPU only), ``gpu_model`` (e.g. ``"NVIDIA H100 80GB HBM3"``; any model
        if absent), ``cpu_limit`` (cores, e.g. ``8``), ``mem_limit`` (e.g.
        ``"64G"``), ``image`` (its default image reference), ``allowed_images``
        (the images its servers may run, in the forms of ``allowed_images``
        but not a callable; replaces the spawner's for this profile; ``{}``:
        only its ``image``), ``datasets`` (the names from
        ``c.Datasets.definitions`` it may mount, e.g. ``["imagenet"]``, ``[]``
        for none; all if absent) and ``ssh`` (``True`` or ``False``: SSH into
        its servers; ``ssh_enabled`` if absent). Users choose one with
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

    ledger_url = Unicode(
        help="""
        The meter's ledger, read for budget checks before a start and
        written with Docker's times of each run the spawner stops (for a meter
        that missed them), e.g.
        ``postgresql+psycopg://jgm:secret@db/jgm``. Defaults to
        ``c.MeterService.db_url``, then ``$JUPYTER_GPU_METER_DB_URL``, then
        the meter's default SQLite file in the hub's working directory.
        """,
    ).tag(config=True)

    @default("ledger_url")
    def _ledger_url_default(self):
        return default_url(self.config)

    @default("network_name")
    def _network_name_default(self):
        # a network of the notebooks' own, not the host's and not Docker's shared default
        return DEFAULT_NETWORK

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

    @property
    def gpu_count(self) -> int:  # GPUSwarmSpawner: as asked for, before Swarm picks them
        return len(self.gpu_uuids)

    #: the display name of the current (or last) run's image (an ``allowed_images`` key)
    image_name = Unicode("")

    @property
    def budgets(self) -> Budgets:
        """The budget settings (``c.Budgets``), shared with the meter."""
        self._budgets = getattr(self, "_budgets", None) or Budgets(parent=self)
        return self._budgets

    # --- what exists and what is taken -------------------------------------

    @property
    def inventory_source(self) -> GPUInventory:
        if not hasattr(self, "_inventory_source"):
            self._inventory_source = GPUInventory(parent=self)
        return self._inventory_source

    async def discover_gpus(self) -> Inventory:
        """The machine's GPUs (NVML, simulated or static), read on :attr:`meter_executor`."""
        return await asyncio.wrap_future(self.meter_executor.submit(self.inventory_source.discover))

    @property
    def allocator(self) -> Allocator:
        """This process's :class:`~jupyter_gpu_meter.allocation.Allocator` for its engine."""
        return Allocator.for_engine(str(self.client.base_url))

    async def _held_in_docker(self) -> dict[str, str]:
        containers = await self.docker("containers", all=True, filters={"label": labels.MANAGED})
        return held_by_containers(containers, self.hub_id)

    async def held_gpus(self) -> dict[str, str]:
        """GPU UUID -> "user/server" for every GPU held now, from Docker's labels and the
        spawns in progress; "/hub/<id>/user/server" where another hub's server holds it."""
        return {**(await self._held_in_docker()), **self.allocator.reserved}

    # --- choosing ----------------------------------------------------------

    @property
    def _owner(self) -> str:
        return f"{self.user.name}/{self.name}"

    @property
    def default_image(self) -> str:
        """``image`` as configured: a start that chose another sets ``self.image`` to it."""
        if not hasattr(self, "_default_image"):
            self._default_image = self.image
        return self._default_image

    def allowed_image_choices(self) -> dict[str, str] | str:
        """``allowed_images`` (the callable called with this spawner) as a dict or ``"*"``;
        a 500 naming the accepted forms when the admin's value is none of them."""
        try:
            return normalize_allowed(self._get_allowed_images())
        except ValueError as e:
            raise spawn_error(500, f"c.GPUDockerSpawner.{e}") from None

    async def check_allowed(self, image):
        """DockerSpawner's check of ``user_options["image"]``: :meth:`start` resolved it."""
        return self.image

    def resolve_choice(self, inventory: Inventory, templates=()) -> Choice:
        """The user's choice as a :class:`Choice`; a 400 that lists what is allowed if invalid."""
        models = {}
        for gpu in inventory.gpus:
            models[gpu.model] = models.get(gpu.model, 0) + 1
        return self.resolve_for_models(models, templates)

    def resolve_for_models(self, models: dict[str, int], templates=()) -> Choice:
        """:meth:`resolve_choice` from model -> the most GPUs of it one server can get."""
        default_image, allowed = self.default_image, self.allowed_image_choices()
        try:
            return resolve_choice(
                self.user_options,
                profiles=parse_profiles(self.profile_list),
                models=models,
                default_gpus=self.default_gpus,
                max_gpus=self.max_gpus_per_user,
                datasets=list(self._datasets()),
                allowed_images=allowed,
                default_image=default_image,
                templates=list(templates),
            )
        except ChoiceError as e:
            raise spawn_error(400, str(e)) from None

    async def _allocate(self, choice: Choice, inventory: Inventory) -> tuple:
        try:
            return await self.allocator.allocate(
                self._held_in_docker,
                inventory,
                owner=self._owner,
                count=choice.gpus,
                model=choice.gpu_model,
                max_per_user=self.max_gpus_per_user,
            )
        except TooManyGPUs as e:
            raise spawn_error(400, str(e)) from None
        except NoFreeGPUs as e:
            raise spawn_error(503, str(e)) from None

    # --- starting ----------------------------------------------------------

    async def start(self):
        self.check_names()
        # the ledger is read while Docker works; the answer is awaited before the container
        budget = asyncio.ensure_future(self._budget_status())
        inventory = await self.discover_gpus()
        self._offered_templates = await self.available_templates()
        choice = self.apply_choice(self.resolve_choice(inventory, self._offered_templates))
        if choice.gpus:
            await self._check_driver(inventory)
        self.home_volume = await self._prepare_home()
        await self._prepare_datasets(choice.datasets)
        gpus = await self._allocate(choice, inventory)
        try:
            self.gpu_uuids = [gpu.uuid for gpu in gpus]
            self.gpu_model = gpus[0].model if gpus else ""
            self.log.info(
                "Server %s gets %s",
                self._owner,
                ", ".join(f"GPU {gpu.index} ({gpu.uuid})" for gpu in gpus) or "no GPU",
            )
            await self._check_budget(await budget)
            self._ulimits = await self._ulimits_for_engine()
            await self._prepare_network()
            # last, when nothing else can refuse the start: a refused one leaves the home alone
            await self._restore_home(choice.snapshot)
            if not self.remove:
                await self._remove_kept_container()
            return await super().start()
        finally:
            # From here on the running container's labels hold the GPUs.
            self.allocator.release(gpus, self._owner)

    def apply_choice(self, choice: Choice) -> Choice:
        """Set this run's template, SSH, image, limits and profile from `choice`."""
        self.template = choice.template
        self.choose_ssh(choice.ssh)
        self.image = choice.image or self.default_image
        self.image_name = choice.image_name or self.image
        if choice.cpu_limit is not None:
            self.cpu_limit = choice.cpu_limit
        if choice.mem_limit is not None:
            self.mem_limit = choice.mem_limit
        self._profile = choice.profile
        return choice

    def price_snapshot(self) -> PriceSnapshot:
        """The prices in force now for this run's GPUs: what its container carries."""
        return Pricing(parent=self).snapshot(self.gpu_model, self.gpu_count)

    async def _budget_status(self):
        """The user's :class:`~jupyter_gpu_meter.budgets.BudgetStatus`, read on
        :attr:`meter_executor`; None without a budget, or when the read fails (logged:
        a start goes ahead, and the meter's budget policy still stops it later)."""
        groups = [group.name for group in self.user.groups]
        try:
            return await asyncio.wrap_future(
                self.meter_executor.submit(
                    read_budget_status, self.ledger_url, self.user.name, groups, utcnow()
                )
            )
        except Exception:
            self.log.exception("Reading the budget of %s failed; going on without", self._owner)
            return None

    async def _check_budget(self, status):
        """Refuse (403) a start whose minimum time ``c.Budgets.minimum_start``, billed as
        the meter bills it, costs more than `status` has left."""
        if status is None:
            return
        count = self.gpu_count
        message = refusal(
            status,
            self.price_snapshot(),
            minimum_seconds=self.budgets.minimum_start,
            now=utcnow(),
            what=f"{count} × {self.gpu_model}" if count else "a CPU-only server",
        )
        if message:
            raise spawn_error(403, message)

    async def _remove_kept_container(self):
        """Never restart a kept container: each run gets a new one. Docker fixes a
        container's GPUs when it is created, and the meter records one session per
        container, so a restarted one would keep stale GPUs or go unmetered.
        ``remove = False`` only keeps a stopped container (for ``docker logs``)."""
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
            kwargs["host_config"] = self._with_templates(
                self._with_datasets(kwargs.get("host_config")),
                getattr(self, "_offered_templates", {}).values(),
            )
            kwargs = enforce_create_kwargs(
                kwargs,
                gpu_uuids=self.gpu_uuids,
                container_labels=self.run_labels(self.gpu_uuids),
                hardening=self.hardening(
                    # every dataset's volume, chosen or not: never writable
                    read_only_volumes=frozenset(
                        dataset.volume for dataset in self._datasets().values()
                    ),
                ),
            )
        return super().docker(method, *args, **kwargs)

    def run_labels(self, gpu_uuids) -> dict:
        """This run's container labels (:func:`~jupyter_gpu_meter.container.container_labels`)
        with the price in force now, which travels with the container to the meter."""
        return {
            **container_labels(
                user=self.user.name,
                server=self.name,
                gpu_uuids=gpu_uuids,
                gpu_model=self.gpu_model,
                profile=getattr(self, "_profile", ""),
                hub_id=self.hub_id,
                image=self.image_name,
                ssh=self.ssh,
            ),
            **self.price_snapshot().to_labels(),
        }

    def hardening(self, **more) -> Hardening:
        """What every container of this spawner is held to (:class:`~.container.Hardening`)."""
        return Hardening(
            user=self.container_user,
            cap_add=tuple(self.cap_add),
            pids_limit=self.pids_limit,
            shm_size_bytes=self.shm_size,
            ulimits=getattr(self, "_ulimits", None) or dict(self.ulimits),
            allow_unsafe=frozenset(self.allow_unsafe_settings),
            **more,
        )

    def get_env(self):
        env = super().get_env()
        env["JUPYTER_GPU_METER_IMAGE"] = self.image_name or self.image
        return env

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
        budget = asyncio.ensure_future(self._budget_status())
        inventory = await self.discover_gpus()
        models = model_counts(inventory.gpus, await self.held_gpus())
        profiles = parse_profiles(self.profile_list)
        allowed = self.allowed_image_choices()
        return render_spawn_form(
            profiles=profiles,
            models=models,
            prices=spawn_prices(profiles, list(models), Pricing(parent=self)),
            budget_left=budget_left(await budget),
            max_gpus_per_user=self.max_gpus_per_user,
            default_gpus=self.default_gpus,
            datasets=list(self._datasets().values()),
            datasets_folder=posixpath.join(self.home_volumes.mount_path, FOLDER),
            user_options=self.user_options,
            snapshots=await self._snapshot_choices(),
            images=offered(allowed),
            profile_images=offered_per_profile(profiles, allowed, self.default_image),
            image_default=display_name(self.default_image, allowed),
            templates=list((await self.available_templates()).values()),
        )

    _options_from_form = staticmethod(options_from_form)
