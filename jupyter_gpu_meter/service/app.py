"""MeterService: the ``jupyter-gpu-meter`` process the hub runs as the service ``gpu-meter``.

It is the only writer of usage. Three loops feed the ledger, each run once at
start and then on its period, every blocking call off the event loop:

- Docker events (a thread following Docker's event stream) and a periodic
  reconcile open and close sessions (:mod:`jupyter_gpu_meter.sessions`);
- the GPU sampler ticks (every second by default) into per-minute rollups;
- a flush writes queued ledger writes in order, keeping them while the
  database is unavailable;
- the storage measurement (every ``storage_interval``, 10 minutes by default)
  records the size of this hub's homes and snapshots
  (:mod:`jupyter_gpu_meter.storage`), in a thread of its own so a slow
  measurement delays neither the event loop nor session writes.

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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlparse

from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import Float, Unicode, default
from traitlets.config import Application

from .._version import __version__
from ..budgets import Budgets, budget_view
from ..clock import utcnow
from ..gpus import GPUInventory
from ..homes import HomeVolumes
from ..identity import HubIdentity
from ..ledger import DB_URL_ENV, DEFAULT_URL, Ledger, WriteBuffer, default_url
from ..ledger.models import name_problem
from ..pricing import Pricing
from ..sampler import GPUSampler, RollupAggregator, SamplerUnavailable
from ..sessions import EVENTS_SINCE_KEY, Opening, SessionChanges, SessionTracker
from ..storage import measure_volumes, plan_periods
from .handlers import HealthHandler
from .hubapi import HubAPI
from .logs import log_request, scrub_web_logs
from .policy_runner import Policies, PolicyRunner
from .state import LedgerWrites, MeterState, error_class, error_summary


def create_application(meter: MeterService, prefix: str, **pieces) -> web.Application:
    """The meter's web app under `prefix` (``/services/gpu-meter/`` behind the hub).

    Health, the usage pages, the JSON API, the CSV export and /metrics
    (:mod:`jupyter_gpu_meter.service.web`). `pieces` replace parts of the
    running meter in tests: ``hub_auth``, ``hub_api``, ``reader``, ``clock``, ``live``
    (a :class:`~jupyter_gpu_meter.service.reader.LiveState` on a real
    :class:`~jupyter_gpu_meter.service.state.MeterState`), ``homes`` (a
    :class:`~jupyter_gpu_meter.service.home_api.HomeService`).
    """
    from .web import app_settings, make_context, routes

    context = make_context(meter, prefix, **pieces)
    scrub_web_logs()  # Tornado logs refused requests' URLs, tokens and all
    return web.Application(
        [(prefix + "api/health", HealthHandler, {"meter": meter}), *routes(context)],
        log_function=_log_request,
        **app_settings(context),
    )


def _log_request(handler):
    log_request(handler)  # without the OAuth codes and tokens a URL may carry


@dataclass(frozen=True)
class StoragePass:
    """What one storage measurement found and recorded."""

    measured_at: datetime
    #: volumes of known size, by name: (user, kind, bytes)
    sizes: dict
    #: volumes whose size Docker could not tell (not billed)
    unknown: list
    #: volumes whose user label the ledger cannot store, with why (not billed)
    unbillable: dict
    #: periods recorded
    periods: int
    #: how long it took, seconds
    duration_s: float


class MeterService(Application):
    """Records every notebook session's runtime, GPUs, utilization and price in the ledger."""

    name = "jupyter-gpu-meter"
    version = __version__
    description = "Meter GPU notebook sessions into the ledger; run by JupyterHub as a service."
    classes = [GPUInventory, GPUSampler, Pricing, Policies, Budgets, HubIdentity, HomeVolumes]
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
            "from the ledger. ``charges`` is GPU and CPU time; ``storage_charges`` comes on top.",
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

    service_prefix = Unicode(
        help="URL prefix of the service's pages, set by the hub (``JUPYTERHUB_SERVICE_PREFIX``).",
    ).tag(config=True)

    @default("service_prefix")
    def _service_prefix_default(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/gpu-meter/")

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
        self.ledger = Ledger(self.db_url)
        self.buffer = WriteBuffer()
        self.pricing = Pricing(parent=self)
        self.inventory_source = GPUInventory(parent=self)
        if docker_api is None:
            import docker

            docker_api = docker.from_env().api
        self.docker_api = docker_api
        #: what the meter knows now; only the event loop changes it
        self.state = MeterState()
        self.hub_id = HubIdentity(parent=self).hub_id
        #: the homes' settings (size_warning); the web app's HomeService is separate
        self.home_volumes = HomeVolumes(parent=self)
        self.tracker = SessionTracker(
            self.ledger, self.docker_api, self.pricing, hub_id=self.hub_id
        )
        self.aggregator = RollupAggregator(self.writer_id)
        self.policies = Policies(parent=self)
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
            utcnow,
            budget_of=self._budget_of,
        )
        self.sampler_config = GPUSampler(parent=self)
        self.sampler = None
        self.sampler_problem = ""
        self._stops = set()  # tasks stopping unbilled servers (kept until done)
        # one thread for Docker and ledger work keeps the tracker's writes in order
        self.ledger_executor = ThreadPoolExecutor(1, thread_name_prefix="gpu-meter-ledger")
        self.sampler_executor = ThreadPoolExecutor(1, thread_name_prefix="gpu-meter-sampler")
        self.storage_executor = ThreadPoolExecutor(1, thread_name_prefix="gpu-meter-storage")
        #: volumes over HomeVolumes.size_warning at the last pass (the loop replaces it whole)
        self.oversized = frozenset()
        self._stopping = threading.Event()
        self._events_stream = None

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

    async def _every(self, seconds: float, step, what: str, *, first_after: float = 0):
        """Run `step` (after `first_after` s), then every `seconds`; on failure log, back off."""
        await asyncio.sleep(first_after)
        delay = seconds
        while True:
            try:
                await step()
                delay = seconds
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = min(max(delay * 2, seconds), 60)
                self.log.exception("%s failed, retrying in %ss", what, delay)
            await asyncio.sleep(delay)

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
        for opening in writes.opened:
            self.buffer.add(self._open_session, opening)
        for closing in writes.closed:
            self.buffer.add(
                self.ledger.close_session,
                closing.container_id,
                ended_at=closing.ended_at,
                reason=closing.reason,
            )
        if writes.touched is not None:
            self.buffer.add(self.ledger.touch_sessions, *writes.touched)
        if writes.events_since_ns is not None:
            self.buffer.add(self.ledger.set_state, EVENTS_SINCE_KEY, writes.events_since_ns)
        return writes

    def _open_session(self, opening: Opening):
        """The ledger write that opens a session (in the ledger thread, through the buffer)."""
        container = opening.container
        return self.ledger.open_session(
            container_id=container.container_id,
            user=container.user,
            server=container.server,
            gpu_uuids=list(container.gpu_uuids),
            gpu_model=container.gpu_model,
            profile=container.profile,
            price=opening.price,
            started_at=opening.started_at,
        )

    async def _write_ledger(self):
        """Flush the queued writes (ledger thread), then act on those refused for good (loop)."""
        await self._in_ledger_thread(self.buffer.flush)
        for write, error in self.buffer.take_rejected():
            if getattr(write, "func", None) == self._open_session:
                self._session_open_failed(write.args[0], error)

    def _session_open_failed(self, opening: Opening, error: BaseException):
        """Fail closed: a server the ledger cannot bill is stopped (by the policy runner)."""
        container = opening.container
        running = self.state.open_failed(opening, error, utcnow())
        self.log.error(
            "The ledger refused to open the session of %s/%s (container %s): %s.%s",
            container.user,
            container.server,
            container.container_id[:12],
            error_class(error),
            " Stopping the server: it would run unbilled." if running else "",
        )
        if running:
            task = asyncio.ensure_future(self.runner.stop_unbilled(utcnow()))
            self._stops.add(task)
            task.add_done_callback(self._stops.discard)

    async def _flush(self):
        rows = self.aggregator.rows()
        if rows:
            self.buffer.add(self._write_rollups, rows)
            self.aggregator.forget_before(rows[-1].minute)  # earlier minutes are complete
        if self.state.running:
            # "seen running at": the end of a session whose end Docker forgot
            # (engine restarted, container gone) is known to within one flush
            self.buffer.add(self.ledger.touch_sessions, list(self.state.running), utcnow())
        await self._write_ledger()

    def _write_rollups(self, rows):
        # A session is opened (queued) before its GPUs get an owner, so the ledger
        # knows every row's session; a row it cannot place means that open failed.
        unplaced = self.ledger.add_rollups(rows)
        if unplaced:
            self.log.error(
                "%d utilization row(s) for container(s) without a session were not recorded: %s",
                len(unplaced),
                sorted({row.container_id[:12] for row in unplaced}),
            )

    def budget_view(self, user: str) -> dict | None:
        """The user page's budget box (blocking: the reader runs it in its own threads).

        Group budgets count with the groups the hub last told the meter (the
        policy runner asks for them while the user has servers running).
        """
        groups = self.runner.groups.get(user, [])  # a dict the loop replaces whole
        status = self.ledger.user_budget_status(user, groups, utcnow())
        return budget_view(status, self.policies.budgets.warn_fraction)

    async def _budget_of(self, user, groups, now):
        return await self._in_ledger_thread(self.ledger.user_budget_status, user, groups, now)

    async def _record_decision(self, *, server, decision, outcome):
        self.buffer.add(
            self.ledger.record_decision,
            at=utcnow(),
            user=server.user,
            server=server.server,
            container_id=server.container_id,
            policy=decision.policy,
            action=decision.action,
            reason=decision.reason,
            dry_run=self.policies.dry_run,
            outcome=outcome,
        )
        await self._write_ledger()

    async def _tick(self):
        if self.sampler is None:
            return
        tick = await asyncio.get_running_loop().run_in_executor(
            self.sampler_executor, self.sampler.sample
        )
        self.state.sampled(tick)
        self.aggregator.add(tick, self.state.gpu_owners())
        self.runner.observe(tick)

    def storage_pass(self, now: datetime) -> StoragePass:
        """Measure this hub's homes and snapshots and record their periods up to `now`.

        Blocking (Docker and the ledger): the loop runs it in the storage
        thread; tests call it with the clock they choose.
        """
        started = time.monotonic()
        measured, unbillable = [], {}
        found = measure_volumes(
            self.docker_api,
            hub_id=self.hub_id,
            helper_image=self.home_volumes.helper_image,
            log=self.log,
        )
        for item in found:
            problem = name_problem(item.volume.user) if item.volume.user else "no user label"
            if problem:  # one bad label must not stop everyone else's billing
                unbillable[item.volume.name] = problem
            else:
                measured.append(item)
        ends = self.ledger.storage_ends(item.volume.name for item in measured)
        periods = plan_periods(
            measured,
            ends,
            now=now,
            interval=timedelta(seconds=self.storage_interval),
            price_per_gb_month=self.pricing.storage_price,
            currency=self.pricing.currency,
        )
        recorded = self.ledger.add_storage_periods(periods, now)
        return StoragePass(
            measured_at=now,
            sizes={
                item.volume.name: (item.volume.user, item.volume.kind, item.size_bytes)
                for item in measured
                if item.size_bytes is not None
            },
            unknown=sorted(item.volume.name for item in measured if item.size_bytes is None),
            unbillable=unbillable,
            periods=recorded,
            duration_s=time.monotonic() - started,
        )

    async def _measure_storage(self):
        result = await asyncio.get_running_loop().run_in_executor(
            self.storage_executor, self.storage_pass, utcnow()
        )
        self.log.debug(
            "Storage: %d volume(s) measured, %d period(s) recorded in %.2fs",
            len(result.sizes),
            result.periods,
            result.duration_s,
        )
        if result.unknown:
            self.log.warning(
                "Storage: Docker cannot tell the size of %d volume(s), not billed "
                "(a volume plugin, or NFS or other options of the local driver?): %s",
                len(result.unknown),
                ", ".join(result.unknown[:10]),
            )
        for name, problem in sorted(result.unbillable.items()):
            self.log.warning("Storage: volume %s is not billed: its user label: %s", name, problem)
        limit = self.home_volumes.size_warning
        oversized = frozenset(
            name
            for name, (_, kind, size) in result.sizes.items()
            if limit is not None and kind == "home" and size > limit
        )
        for name in sorted(oversized - self.oversized):  # once, when a home grows past it
            user, _, size = result.sizes[name]
            self.log.warning(
                "Storage: the home %s of %s holds %d bytes, more than "
                "c.HomeVolumes.size_warning (%d)",
                name,
                user,
                size,
                limit,
            )
        self.oversized = oversized

    def _follow_events(self, loop, queue):
        """Thread: Docker's events, in order, into `queue`.

        Each (re)connection first replays what Docker still has since the last
        event handled (bounded by now), then asks for a reconcile, then follows
        live events: a session that ended while the meter was not watching is
        closed at its exact time from the replay before the reconcile would
        fall back to an estimate.
        """
        delay = 1

        def push(item):
            loop.call_soon_threadsafe(queue.put_nowait, item)

        while not self._stopping.is_set():
            try:
                until_ns = time.time_ns()
                for event in self.tracker.events(self.state.events_since_ns, until_ns):
                    push(event)
                push({"reconcile": True})
                self._events_stream = self.tracker.events(until_ns)
                for event in self._events_stream:
                    push(event)
                    delay = 1
            except Exception as e:
                if self._stopping.is_set():
                    return
                self.log.warning("Docker events failed (%s), retrying in %ss", e, delay)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, 30)

    async def _handle_events(self, queue):
        while True:
            event = await queue.get()
            try:
                if event.get("reconcile"):  # the stream broke: Docker may have restarted
                    await self._reconcile()
                else:
                    await self._handle_event(event)
            except Exception:
                self.log.exception("Handling Docker event %s failed", event)

    async def _handle_event(self, event: dict):
        """One Docker event: read in the ledger thread, applied here on the loop, written."""
        changes = await self._in_ledger_thread(self.tracker.handle_event, event)
        if changes is not None:
            self._apply(changes)
            await self._write_ledger()
        if event.get("timeNano"):
            self.state.events_since_ns = int(event["timeNano"])

    # --- start and stop ----------------------------------------------------

    async def _follow_the_hub(self, stop: asyncio.Event):
        """A managed service lives and dies with its hub: if the hub is killed
        (its pid is gone as our parent), stop, so the next hub's meter can start."""
        parent = os.getppid()
        while os.getppid() == parent:  # noqa: ASYNC110 (no event tells of a parent's death)
            await asyncio.sleep(1)
        self.log.warning("The hub (pid %s) is gone: stopping the meter", parent)
        stop.set()

    async def _open_sampler(self):
        sampler = self.sampler_config.make_sampler(self.inventory_source)
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
        since = await self._in_ledger_thread(self.ledger.get_state, EVENTS_SINCE_KEY)
        self.state.events_since_ns = int(since) if since else time.time_ns()
        await self._open_sampler()

        loop = asyncio.get_running_loop()
        queue = asyncio.Queue()
        tasks = [asyncio.ensure_future(self._handle_events(queue))]
        events_thread = threading.Thread(
            target=self._follow_events, args=(loop, queue), name="gpu-meter-events", daemon=True
        )
        events_thread.start()
        # the events thread asks for the first reconcile, after its replay
        reconcile = self._every(
            self.reconcile_interval,
            self._reconcile,
            "Reconcile",
            first_after=self.reconcile_interval,
        )
        tasks.append(asyncio.ensure_future(reconcile))
        policies = self._every(
            self.policies.interval,
            self.runner.run_once,
            "Policies",
            first_after=self.policies.interval,
        )
        tasks.append(asyncio.ensure_future(policies))
        tasks.append(
            asyncio.ensure_future(
                self._every(self.sampler_config.interval, self._tick, "GPU sampling")
            )
        )
        tasks.append(
            asyncio.ensure_future(self._every(self.flush_interval, self._flush, "Ledger flush"))
        )
        tasks.append(
            asyncio.ensure_future(
                self._every(self.storage_interval, self._measure_storage, "Storage measurement")
            )
        )

        url = urlparse(self.service_url)
        server = HTTPServer(create_application(self, self.service_prefix), xheaders=True)
        server.listen(url.port or 80, url.hostname or "127.0.0.1")
        self.log.info("GPU meter listening on %s%s", self.service_url, self.service_prefix)

        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if os.environ.get("JUPYTERHUB_SERVICE_NAME"):
            tasks.append(asyncio.ensure_future(self._follow_the_hub(stop)))
        await stop.wait()
        self.log.info("Stopping: writing what is pending")
        self._stopping.set()
        if self._events_stream is not None:
            self._events_stream.close()
        server.stop()
        for task in tasks:
            task.cancel()
        try:
            await asyncio.wait_for(self._flush(), timeout=10)
        except Exception:
            self.log.exception("Final flush failed; %d write(s) lost", len(self.buffer))
        if self.sampler is not None:
            await loop.run_in_executor(self.sampler_executor, self.sampler.close)

    def start(self):
        if self.subapp is not None:
            return self.subapp.start()
        asyncio.run(self.start_async())


main = MeterService.launch_instance
