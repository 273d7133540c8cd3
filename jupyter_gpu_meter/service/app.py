"""MeterService: the ``jupyter-gpu-meter`` process the hub runs as the service ``gpu-meter``.

It is the only writer of usage. Loops (:mod:`~jupyter_gpu_meter.service.loops`)
feed the ledger through its write queue (:mod:`~jupyter_gpu_meter.service.writes`),
each run once at start and then on its period, every blocking call off the event loop:

- Docker events (a thread following Docker's event stream) and a periodic
  reconcile open and close sessions (:mod:`jupyter_gpu_meter.sessions`);
- the GPU sampler ticks (every second by default) into per-minute rollups;
- a flush writes queued ledger writes in order, keeping them while the
  database is unavailable;
- the storage measurement (every ``storage_interval``, 10 minutes by default)
  records the size of this hub's homes and snapshots
  (:mod:`~jupyter_gpu_meter.service.storage_pass`), in a thread of its own so a
  slow measurement delays neither the event loop nor session writes;
- the policies check the running servers (:mod:`~jupyter_gpu_meter.service.policy_runner`).

Every "now" the meter needs comes from one clock, ``MeterService.clock``.

What the meter knows now (running containers, stop reasons, the last GPU
sample, failure counts) is one :class:`~jupyter_gpu_meter.service.state.MeterState`
that only the event loop changes: the ledger thread reads Docker and the
ledger and returns :class:`~jupyter_gpu_meter.sessions.SessionChanges`, which
the loop applies. A session the ledger refuses to open for good (a value a
column cannot hold, not an outage) fails closed: the policy runner stops the
server, and ``api/health`` and /metrics count it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from jupyterhub.traitlets import Callable
from traitlets import Float, Unicode, default
from traitlets.config import Application

from .._version import __version__
from ..budgets import Budgets, budget_view
from ..clock import check_clock, utcnow
from ..gpus import GPUInventory
from ..homes import HomeVolumes
from ..identity import HubIdentity
from ..ledger import DB_URL_ENV, DEFAULT_URL, Ledger, WriteBuffer, default_url
from ..pricing import Pricing
from ..sampler import GPUSampler, RollupAggregator, SamplerUnavailable
from ..sessions import EVENTS_SINCE_KEY, Opening, SessionChanges, SessionTracker
from . import nodes, storage_pass
from .hubapi import HubAPI
from .loops import DockerEvents, every, follow_the_hub, handle_events
from .policy_runner import Policies, PolicyRunner
from .server_status import ServerStatus
from .ssh_push import KeyPusher
from .state import LedgerWrites, MeterState, error_class, error_summary
from .web import listen
from .writes import queue_decision, queue_rollups, queue_session_writes, refused_openings


class MeterService(Application, nodes.ClusterSettings, storage_pass.MeasuresStorage):
    """Records every notebook session's runtime, GPUs, utilization and price in the ledger."""

    name = "jupyter-gpu-meter"
    version = __version__
    description = "Meter GPU notebook sessions into the ledger; run by JupyterHub as a service."
    classes = [GPUInventory, GPUSampler, Pricing, Policies, Budgets, HubIdentity, HomeVolumes]
    classes += [ServerStatus]
    aliases = {
        "config": "MeterService.config_file",
        "db-url": "MeterService.db_url",
        "log-level": "Application.log_level",
    }
    # the commands on the ledger and homes (jupyter_gpu_meter.cli), imported when run;
    # each help is its command's docstring (tests/test_cli_commands.py checks)
    subcommands = {
        "report": (
            "jupyter_gpu_meter.cli.report.ReportCommand",
            "Per user: sessions, GPU-hours and charges, and storage (GB-hours and charges),\n"
            "from the ledger. ``charges`` is GPU and CPU time; ``storage_charges`` comes on top.\n"
            "Then busy and idle GPU-hours, and energy (kWh; ``energy_charges`` on top).",
        ),
        "upgrade-db": (
            "jupyter_gpu_meter.cli.db.UpgradeDBCommand",
            "Create the ledger's tables, or migrate them to this version (alembic).",
        ),
        "budget": (
            "jupyter_gpu_meter.cli.budget.BudgetCommand",
            "Budgets per user or group: set, grant, remove, show, history.",
        ),
        "homes": ("jupyter_gpu_meter.cli.homes.HomesCommand", "Users' home volumes: list, remove."),
        "snapshots": (
            "jupyter_gpu_meter.cli.homes.SnapshotsCommand",
            "Snapshots of users' homes: list, take, restore, delete.",
        ),
        "node-config": (
            "jupyter_gpu_meter.cli.node_config.NodeConfigCommand",
            "Print a Swarm node's configuration from its GPUs (NVML, or the simulated ones):\n"
            "the daemon.json keys (GPUs as generic resources, the NVIDIA runtime), the\n"
            "runtime's swarm-resource line and the node-label command for a manager.",
        ),
        "agent": (
            "jupyter_gpu_meter.service.agent.MeterAgent",
            "The meter of one GPU server in a cluster: its Docker events, GPUs and\n"
            "heartbeats into the shared ledger, tagged with the node.",
        ),
    }

    config_file = Unicode(
        "",
        help="""
        A config file to load, typically the hub's own ``jupyterhub_config.py``,
        so that GPUs and prices are set once for the spawner and the meter.
        Command-line options win over it.
        """,
    ).tag(config=True)

    db_url = Unicode(
        help=f"""
        The ledger's SQLAlchemy URL: a SQLite file (default
        ``{DEFAULT_URL}``, relative to the working directory) or PostgreSQL,
        e.g. ``postgresql+psycopg://jgm:secret@db.example.org/jgm``.
        Defaults to the environment variable ``{DB_URL_ENV}``.
        """,
    ).tag(config=True)

    @default("db_url")
    def _db_url_default(self):
        return default_url()

    reconcile_interval = Float(
        30.0,
        min=1.0,
        help="""
        Seconds between reconciles against Docker's container list (e.g. 30).
        Docker events give exact times; the reconcile catches what events missed.
        """,
    ).tag(config=True)

    flush_interval = Float(
        5.0,
        min=0.1,
        help="""
        Seconds between writes of queued ledger writes and the current minute's
        rollups (e.g. 5). A crash loses at most this much utilization detail;
        session start and end times are never lost (Docker keeps them).
        """,
    ).tag(config=True)

    storage_interval = Float(
        600.0,
        min=1.0,
        help="""
        Seconds between two measurements of the size of this hub's homes and
        snapshots, e.g. 600 (the default, 10 minutes). The first runs at start.
        Each is billed from the one before at the size it finds, so storage
        charges grow in steps of this interval.
        """,
    ).tag(config=True)

    service_url = Unicode(
        help="""
        Where the service listens, e.g. ``http://127.0.0.1:10101``. Set by the
        hub for a managed service (``JUPYTERHUB_SERVICE_URL``).
        """,
    ).tag(config=True)

    @default("service_url")
    def _service_url_default(self):
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    notebook_ip = Unicode(
        "",
        help="""
        Where notebooks reach this host, e.g. ``172.18.0.1`` (``setup_network`` sets
        its network's gateway): the meter listens there too, on ``service_url``'s
        port, for ``api/server-status`` and ``api/health`` only. "": nowhere else.
        """,
    ).tag(config=True)

    service_prefix = Unicode(
        help="URL prefix of the service's pages, set by the hub (``JUPYTERHUB_SERVICE_PREFIX``).",
    ).tag(config=True)

    @default("service_prefix")
    def _service_prefix_default(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/gpu-meter/")

    clock = Callable(
        utcnow,
        help="""
        For tests only: the meter's "now", a function of no arguments that
        returns a timezone-aware UTC ``datetime``, e.g. the system's clock plus
        an offset a test moves. Policies, samples, decisions, budgets, storage
        and pages use it; Docker's event times (sessions' bounds) stay Docker's.
        Default: :func:`jupyter_gpu_meter.clock.utcnow`, the system's clock.
        """,
    ).tag(config=True)

    def initialize(self, argv=None):
        super().initialize(argv)
        if self.subapp is not None:  # a command: jupyter-gpu-meter report, ...
            return
        if self.config_file:
            self.load_config_file(self.config_file)
            self.update_config(self.cli_config)  # the command line wins
        self.writer_id = f"{os.uname().nodename}-{os.getpid()}-{secrets.token_hex(3)}"

    # --- state shared by the loops ------------------------------------------

    def _setup(self, *, docker_api=None, hub_api=None):
        """Make the pieces; `docker_api` and `hub_api` replace Docker's and the hub's
        clients (tests inject stand-ins with the same methods)."""
        self._check_clock()
        self.ledger = Ledger(self.db_url, clock=self.clock)
        self.buffer = WriteBuffer()
        self.pricing = Pricing(parent=self)
        self.inventory_source = GPUInventory(parent=self)
        if self.cluster:  # the GPUs and the Docker engines are the nodes' (agents')
            self.inventory_source = nodes.LedgerInventory(self.ledger)
        elif docker_api is None:
            import docker

            docker_api = docker.from_env().api
        self.docker_api = docker_api
        #: the meter state key of the last Docker event handled (one per node in a cluster)
        self.events_key = EVENTS_SINCE_KEY
        #: what the meter knows now; only the event loop changes it
        self.state = MeterState()
        self.hub_id = HubIdentity(parent=self).hub_id
        #: the homes' settings (size_warning); the web app's HomeService is separate
        self.home_volumes = HomeVolumes(parent=self)
        self.tracker = SessionTracker(
            self.ledger, self.docker_api, self.pricing, hub_id=self.hub_id, clock=self.clock
        )
        self.policies = Policies(parent=self)
        if self.cluster:  # GPU activity by the minute, stop reasons through the ledger
            nodes.check_policy_settings(self.policies)
        self.runner = PolicyRunner(
            self.policies,
            self.state,
            self._record_decision,
            hub_api
            or HubAPI(
                os.environ.get("JUPYTERHUB_API_URL", ""),
                os.environ.get("JUPYTERHUB_API_TOKEN", ""),
            ),
            self.log,
            self.clock,
            budget_of=self._budget_of,
            stop_reason=nodes.write_stop_reason(self) if self.cluster else None,
        )
        self.sampler_config = GPUSampler(parent=self)
        self.aggregator = RollupAggregator(self.writer_id, self.sampler_config.interval)
        self.sampler = None
        self.sampler_problem = ""
        self._stops = set()  # tasks stopping unbilled servers (kept until done)
        # one thread for Docker and ledger work keeps the tracker's writes in order
        self.ledger_executor = ThreadPoolExecutor(1, thread_name_prefix="gpu-meter-ledger")
        self.sampler_executor = ThreadPoolExecutor(1, thread_name_prefix="gpu-meter-sampler")
        self.storage_executor = ThreadPoolExecutor(1, thread_name_prefix="gpu-meter-storage")
        #: volumes over HomeVolumes.size_warning at the last pass (the loop replaces it whole)
        self.oversized = frozenset()
        self.ssh_keys = KeyPusher.from_meter(self)  # writes users' keys into their servers
        self.events = DockerEvents(self.tracker, lambda: self.state.events_since_ns, self.log)

    def _check_clock(self):
        now = check_clock(self.clock)  # refuses one that does not give aware UTC
        if self.clock is not utcnow:
            self.log.warning("MeterService.clock is %r (now %s): for tests only", self.clock, now)

    async def _in_ledger_thread(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(self.ledger_executor, func, *args)

    def health(self) -> dict:
        return {
            "status": "ok",
            "version": __version__,
            "gpu_sampling": "on" if self.sampler is not None else "off",
            "gpu_sampling_problem": self.sampler_problem,
            **self.state.health(),
            "pending_writes": len(self.buffer),
            # the class, never the message: a database error's holds the SQL and its data
            "last_write_error": error_summary(self.buffer.last_error),
        }

    # --- loops -----------------------------------------------------------------

    def _every(self, seconds: float, step, what: str, *, first: bool = True):
        """`step` every `seconds` (the first at start, or one period after it)."""
        return every(seconds, step, what, self.log, first_after=0 if first else seconds)

    async def _reconcile(self):
        changes = await self._in_ledger_thread(self.tracker.reconcile)
        writes = self._apply(changes)
        if writes.new or writes.closed:
            self.log.info(
                "Reconcile: %d session(s) opened, %d closed", len(writes.new), len(writes.closed)
            )
        await self._flush()

    def _apply(self, changes: SessionChanges) -> LedgerWrites:
        """On the loop: apply what the ledger thread found, and queue its ledger writes."""
        writes = self.state.apply(changes)
        queue_session_writes(self.buffer, self.ledger, writes, self.events_key)
        return writes

    async def _write_ledger(self):
        """Flush the queued writes (ledger thread), then act on those refused for good (loop)."""
        await self._in_ledger_thread(self.buffer.flush)
        for opening, error in refused_openings(self.buffer.take_rejected()):
            self._session_open_failed(opening, error)

    def _session_open_failed(self, opening: Opening, error: BaseException):
        """Fail closed: a server the ledger cannot bill is stopped (by the policy runner)."""
        container = opening.container
        running = self.state.open_failed(opening, error, self.clock())
        self.log.error(
            "The ledger refused to open the session of %s/%s (container %s): %s.%s",
            container.user,
            container.server,
            container.container_id[:12],
            error_class(error),
            " Stopping the server: it would run unbilled." if running else "",
        )
        if running:
            task = asyncio.ensure_future(self.runner.stop_unbilled(self.clock()))
            self._stops.add(task)
            task.add_done_callback(self._stops.discard)

    async def _flush(self):
        queue_rollups(self.buffer, self.ledger, self.log, self.aggregator, self.state.running)
        if self.state.running and not self.cluster:  # (cluster: the agents saw them)
            # "seen running at": the end of a session whose end Docker forgot
            # (engine restarted, container gone) is known to within one flush
            self.buffer.add(self.ledger.touch_sessions, list(self.state.running), self.clock())
        await self._write_ledger()

    def budget_view(self, user: str) -> dict | None:
        """The user page's budget box (blocking: the reader runs it in its own threads).

        Group budgets count with the groups the hub last told the meter (the
        policy runner asks for them while the user has servers running).
        """
        groups = self.runner.groups.get(user, [])  # a dict the loop replaces whole
        status = self.ledger.user_budget_status(user, groups, self.clock())
        return budget_view(status, self.policies.budgets.warn_fraction)

    async def _budget_of(self, user, groups, now):
        return await self._in_ledger_thread(self.ledger.user_budget_status, user, groups, now)

    async def _record_decision(self, *, server, decision, outcome):
        at, dry_run = self.clock(), self.policies.dry_run
        queue_decision(self.buffer, self.ledger, at, server, decision, outcome, dry_run)
        await self._write_ledger()

    async def _tick(self):
        if self.sampler is None:
            return
        tick = await asyncio.get_running_loop().run_in_executor(
            self.sampler_executor, self.sampler.sample
        )
        self.state.sampled(tick)
        self.aggregator.add(tick, self.state.gpu_owners(), self.state.running.keys())
        self.runner.observe(tick)
        await self.runner.check_isolation(tick)

    async def _check_policies(self):
        """One policy check; then ``api/health`` tells when it began (the meter's clock)."""
        began = self.clock()
        if self.cluster:  # no sampler here: the agents' rollups say what the GPUs did
            await nodes.follow_activity(self)
        await self.runner.run_once()
        self.state.policies_checked(began)

    async def _handle_event(self, event: dict):
        """One Docker event: read in the ledger thread, applied here on the loop, written."""
        changes = await self._in_ledger_thread(self.tracker.handle_event, event)
        if changes is not None:
            self._apply(changes)
            await self._write_ledger()
        if self.ssh_keys is not None:
            self.ssh_keys.on_event_soon(event)
        if event.get("timeNano"):
            self.state.events_since_ns = int(event["timeNano"])

    # --- start and stop ----------------------------------------------------

    async def _open_sampler(self):
        sampler = self.sampler_config.make_sampler(self.inventory_source, clock=self.clock)
        try:
            await asyncio.get_running_loop().run_in_executor(self.sampler_executor, sampler.open)
        except SamplerUnavailable as e:
            self.sampler_problem = str(e)
            self.log.warning("%s. Session runtimes are still metered.", e)
            return
        self.sampler = sampler

    async def start_async(self):
        self._setup()
        self.log.info("Ledger: %s", self.ledger.url)
        await self._in_ledger_thread(self.ledger.ensure_schema)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        tasks = await self._loops()
        if os.environ.get("JUPYTERHUB_SERVICE_NAME"):
            tasks.append(follow_the_hub(stop, self.log))
        tasks = [asyncio.ensure_future(task) for task in tasks]
        servers = self._listen()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        self.log.info("Stopping: writing what is pending")
        self.events.stop()
        for server in servers:
            server.stop()
        for task in tasks:
            task.cancel()
        try:
            await asyncio.wait_for(self._flush(), timeout=10)
        except Exception:
            self.log.exception("Final flush failed; %d write(s) lost", len(self.buffer))
        if self.sampler is not None:
            await loop.run_in_executor(self.sampler_executor, self.sampler.close)

    async def _loops(self) -> list:
        """The loops to run (coroutines): metering this engine, or (cluster) the ledger's."""
        check = self._every(self.policies.interval, self._check_policies, "Policies", first=False)
        if self.cluster:
            return [nodes.sweep_loop(self), check]
        storage = self._every(self.storage_interval, self._measure_storage, "Storage measurement")
        return [*await self._metering_loops(), check, storage]

    async def _metering_loops(self) -> list:
        """Docker events, reconcile, GPU sampling, ledger flush: what meters this engine."""
        since = await self._in_ledger_thread(self.ledger.get_state, self.events_key)
        self.state.events_since_ns = int(since) if since else time.time_ns()
        await self._open_sampler()
        queue = asyncio.Queue()
        self.events.start(asyncio.get_running_loop(), queue)  # asks for the first reconcile
        return [
            handle_events(
                queue, reconcile=self._reconcile, handle_event=self._handle_event, log=self.log
            ),
            self._every(self.reconcile_interval, self._reconcile, "Reconcile", first=False),
            self._every(self.sampler_config.interval, self._tick, "GPU sampling"),
            self._every(self.flush_interval, self._flush, "Ledger flush"),
        ]

    def _listen(self) -> list:
        return listen(self, self.service_url, self.service_prefix, self.notebook_ip)

    def start(self):
        if self.subapp is not None:
            return self.subapp.start()
        try:
            asyncio.run(self.start_async())
        except nodes.ClusterConfigError as e:
            self.log.critical("%s", e)
            self.exit(1)
