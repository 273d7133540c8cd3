"""Running the policies: what the meter knows -> decisions -> the hub's REST API.

The decisions themselves are pure (:mod:`jupyter_gpu_meter.policies`); this
module feeds them, acts on them with the least scopes (stop a server, report
activity), logs each one and records it in the ledger with its reason.

One user's or one server's failure (the hub answers 404 for a renamed user,
a 5xx, a policy that raises) never stops the policies for the others: each
user's budget check and each server's policies run on their own, and a
failure is logged and counted in the meter's state (``policy_errors`` in
``api/health`` and /metrics).
"""

from __future__ import annotations

import inspect
from datetime import timedelta
from decimal import Decimal

from jupyterhub.traitlets import Callable
from tornado.httpclient import HTTPClientError
from tornado.web import HTTPError
from traitlets import Bool, Dict, Float, Int, validate
from traitlets.config import LoggingConfigurable

from .. import policies
from ..budgets import Budgets, spends_from
from ..policies import STOP, WARN, Decision, ServerState, track_idle
from .isolation_check import IsolationCheck
from .state import MeterState, error_class

#: the policy name of the stop of a server whose session the ledger refused
UNBILLED_POLICY = "unbilled"


class Policies(LoggingConfigurable):
    """When the meter stops servers, and when it vouches for busy ones."""

    interval = Float(30.0, min=1.0, help="Seconds between policy checks, e.g. 30.").tag(config=True)

    dry_run = Bool(
        False,
        help="""
        Decide and record, but act on nothing: every decision is logged and
        recorded as "would stop (dry run)". For trying new limits.
        """,
    ).tag(config=True)

    gpu_idle_threshold = Float(
        5.0,
        min=0.0,
        max=100.0,
        help="""
        A GPU below this utilization (percent) is idle, e.g. 5. A server is
        idle when all its GPUs are.
        """,
    ).tag(config=True)

    gpu_idle_timeout = Int(
        3600,
        min=0,
        help="""
        Stop a GPU server whose GPUs have all been idle this many seconds,
        e.g. 3600 (1 h). 0 turns the policy off. Per profile: ``per_profile``.
        In cluster mode (``MeterService.cluster``) 0 or at least 120: GPU
        activity comes by the minute there.
        """,
    ).tag(config=True)

    max_age = Int(
        0,
        min=0,
        help="""
        Stop any server that has run this many seconds, e.g. 86400 (1 day).
        0 (the default) turns the policy off. Per profile: ``per_profile``.
        """,
    ).tag(config=True)

    per_profile = Dict(
        help="""
        Settings for servers started with a profile, by slug, e.g.
        ``{"gpu-2": {"gpu_idle_timeout": 1800, "max_age": 43200}}``.
        Keys: ``gpu_idle_timeout``, ``max_age`` (seconds).
        """,
    ).tag(config=True)

    @validate("per_profile")
    def _check_per_profile(self, proposal):
        allowed = {"gpu_idle_timeout", "max_age"}
        for slug, settings in proposal.value.items():
            if not isinstance(settings, dict) or set(settings) - allowed:
                raise ValueError(
                    f"per_profile[{slug!r}] = {settings!r}: use a dict with "
                    f"{' and/or '.join(sorted(allowed))} in seconds"
                )
            for key, value in settings.items():
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"per_profile[{slug!r}][{key!r}] must be seconds >= 0")
        return proposal.value

    stop_on_isolation_breach = Bool(
        False,
        help="""
        Stop a server one of whose processes uses a GPU the server does not own
        (an isolation breach: see :mod:`jupyter_gpu_meter.isolation`), with the
        reason "isolation breach: ...", e.g. True. Never the server whose GPU
        it is; a process in no server of this hub stops nothing. Off (the
        default): each breach is logged, recorded as a decision of the policy
        ``isolation`` and shown, and nothing is stopped. ``dry_run`` applies.
        """,
    ).tag(config=True)

    keep_alive = Bool(
        True,
        help="""
        While a server's GPUs are busy, report activity to the hub, so an idle
        culler (jupyterhub-idle-culler) keeps a training run that has no
        browser open. Needs the ``users:activity`` scope.
        """,
    ).tag(config=True)

    keep_alive_window = Int(
        300,
        min=1,
        help="""
        Seconds after the GPUs were last busy during which activity is
        reported, e.g. 300. In cluster mode (``MeterService.cluster``) at
        least 120, counted from the end of the last busy minute.
        """,
    ).tag(config=True)

    # Deprecated: the budget settings are c.Budgets' (jupyter_gpu_meter.budgets.Budgets),
    # which the spawner reads too; Budgets takes these when its own are not set.
    budget_grace = Int(300, min=0, help="Deprecated: use ``c.Budgets.grace``.").tag(config=True)
    budget_warn_fraction = Float(
        0.8, min=0.0, max=1.0, help="Deprecated: use ``c.Budgets.warn_fraction``."
    ).tag(config=True)
    budget_minimum_start = Int(
        3600, min=0, help="Deprecated: use ``c.Budgets.minimum_start``."
    ).tag(config=True)

    @property
    def budgets(self) -> Budgets:
        """The budget settings (``c.Budgets``), shared with the spawner."""
        if not hasattr(self, "_budgets"):
            self._budgets = Budgets(parent=self)
        return self._budgets

    gpu_idle_policy = Callable(
        policies.gpu_idle,
        help="""
        ``f(*, server, now, timeout, **kwargs) -> Decision | None``, sync or
        async. The default stops a server whose GPUs were all idle for ``timeout``.
        """,
    ).tag(config=True)

    gpu_health_policy = Callable(
        policies.gpu_lost,
        help="""
        ``f(*, server, unhealthy, **kwargs) -> Decision | None``: ``unhealthy``
        maps GPU UUIDs to the problem NVML reports. The default stops a server
        whose GPU is lost, so its session ends with that reason.
        """,
    ).tag(config=True)

    max_age_policy = Callable(
        policies.max_age,
        help="``f(*, server, now, max_age, **kwargs) -> Decision | None``, sync or async.",
    ).tag(config=True)

    keep_alive_policy = Callable(
        policies.keep_alive,
        help="``f(*, server, now, window, **kwargs) -> bool``: report activity for this server?",
    ).tag(config=True)

    budget_policy = Callable(
        policies.budget,
        help="""
        ``f(*, spent, limit, unit, now, exhausted_since, grace, warn_fraction,
        **kwargs) -> Decision | None``, sync or async.
        """,
    ).tag(config=True)

    def for_profile(self, profile: str, key: str) -> timedelta:
        return timedelta(seconds=self.per_profile.get(profile, {}).get(key, getattr(self, key)))


async def _call(function, **kwargs):
    result = function(**kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


class PolicyRunner:
    """Tracks GPU idleness per server and applies the policies on a period.

    Runs on the meter's event loop: it reads and changes the loop's
    :class:`~jupyter_gpu_meter.service.state.MeterState` (stop reasons, error
    counts) and its own dicts, and nothing else touches them; :attr:`groups`
    is also read by reader threads, so it is replaced whole, never changed.
    `hub` is the hub's API (:class:`~jupyter_gpu_meter.service.hubapi.HubAPI`
    or a stand-in with the same coroutines).
    """

    def __init__(
        self,
        config: Policies,
        state: MeterState,
        record,
        hub,
        log,
        clock,
        budget_of=None,
        stop_reason=None,
    ):
        self.config = config
        #: async (container id, reason or None) -> None: writes why a server is being
        #: stopped where its close will read it, before the hub is asked (cluster mode)
        self.stop_reason = stop_reason
        self.state = state
        self.record = record  # async (decision fields) -> None, writes to the ledger
        #: async (user, groups, now) -> BudgetStatus | None, read from the ledger
        self.budget_of = budget_of
        #: user -> when the meter first saw their budget used up
        self.exhausted_since: dict = {}
        #: user -> the last budget warning recorded ("80%" or "used up"), to record each once
        self.warned: dict[str, str] = {}
        #: user -> their groups, as the hub last said (for group budgets), and when it said
        #: so; replaced whole (reader threads read it)
        self.groups: dict[str, list[str]] = {}
        self._groups_at: dict = {}
        self.hub = hub
        self.log = log
        self.clock = clock
        #: container id -> (idle_since, busy_at)
        self.activity: dict[str, tuple] = {}
        #: GPU UUID -> problem, for the GPUs the last tick found unhealthy
        self.unhealthy: dict[str, str] = {}
        #: the isolation check of each tick (jupyter_gpu_meter.service.isolation_check)
        self.isolation = IsolationCheck(self)

    def observe(self, tick):
        """Fold one sampler tick into each running server's idle/busy times."""
        by_uuid = {gpu.uuid: gpu.utilization for gpu in tick.gpus}
        self.unhealthy = {
            gpu.uuid: gpu.problem or "unhealthy" for gpu in tick.gpus if not gpu.healthy
        }
        for container in self.state.running.values():
            if not container.gpu_uuids:
                continue
            utils = [by_uuid.get(uuid) for uuid in container.gpu_uuids]
            idle_since, busy_at = self.activity.get(container.container_id, (None, None))
            idle_since = track_idle(
                idle_since, at=tick.at, utilizations=utils, threshold=self.config.gpu_idle_threshold
            )
            if any(u is not None and u >= self.config.gpu_idle_threshold for u in utils):
                busy_at = tick.at
            self.activity[container.container_id] = (idle_since, busy_at)
        for container_id in set(self.activity) - set(self.state.running):
            del self.activity[container_id]

    async def check_isolation(self, tick) -> None:
        """The isolation check of one tick: new breaches logged, recorded, maybe stopped."""
        await self.isolation.check(tick)

    def server_state(self, container, started_at=None) -> ServerState:
        idle_since, busy_at = self.activity.get(container.container_id, (None, None))
        return ServerState(
            user=container.user,
            server=container.server,
            container_id=container.container_id,
            profile=container.profile,
            gpu_uuids=container.gpu_uuids,
            started_at=container.started_at or started_at,
            idle_since=idle_since,
            busy_at=busy_at,
        )

    def failed(self, what: str, error: BaseException) -> None:
        """Log and count one failed step; the others go on."""
        self.state.policy_failed(error)
        expected = isinstance(error, (HTTPError, HTTPClientError))
        self.log.warning(
            "Policies: %s failed (%s: %s); the other users and servers go on",
            what,
            error_class(error),
            error,
            exc_info=None if expected else error,
        )

    async def run_once(self):
        now = self.clock()
        await self.stop_unbilled(now)
        await self.isolation.retry_stops()
        await self.check_budgets(now)
        for container in list(self.state.running.values()):
            if container.started_at is None or container.container_id in self.state.stop_reasons:
                continue  # not started yet, or a stop is already under way
            try:
                await self._check_server(container, now)
            except Exception as e:
                self.failed(f"checking {container.user}/{container.server}", e)

    async def stop_unbilled(self, now) -> None:
        """Fail closed: stop each server whose session the ledger refused to open.

        Also in a dry run: a server that cannot be billed is not left running.
        A stop that fails (the hub is down) is tried again on the next check.
        """
        for failure in list(self.state.unbilled.values()):
            container = failure.container
            if container.container_id in self.state.stop_reasons:
                continue  # a stop is under way
            decision = Decision(
                UNBILLED_POLICY,
                STOP,
                f"the ledger refused to record its session ({failure.error}): "
                "a server the meter cannot bill is not left running",
            )
            try:
                await self.stop(self.server_state(container, failure.at), decision, force=True)
            except Exception as e:
                self.failed(f"stopping the unbilled {container.user}/{container.server}", e)

    async def _check_server(self, container, now):
        server = self.server_state(container)
        decision = (
            await _call(
                self.config.gpu_health_policy, server=server, unhealthy=dict(self.unhealthy)
            )
            or await _call(
                self.config.gpu_idle_policy,
                server=server,
                now=now,
                timeout=self.config.for_profile(server.profile, "gpu_idle_timeout"),
            )
            or await _call(
                self.config.max_age_policy,
                server=server,
                now=now,
                max_age=self.config.for_profile(server.profile, "max_age"),
            )
        )
        if decision is not None and decision.action == STOP:
            await self.stop(server, decision)
        elif self.config.keep_alive and await _call(
            self.config.keep_alive_policy,
            server=server,
            now=now,
            window=timedelta(seconds=self.config.keep_alive_window),
        ):
            await self.vouch(server, now)

    async def groups_of(self, user: str, now) -> list[str]:
        """`user`'s groups from the hub, asked at most once a minute per user.

        When the hub cannot say (a renamed or deleted user: 404; a 5xx), the
        groups it said last (none if it never did), logged and counted: the
        user's own budget still applies.
        """
        fetched = self._groups_at.get(user)
        if fetched is None or now - fetched >= timedelta(seconds=60):
            try:
                groups = await self.hub.user_groups(user)
            except Exception as e:
                self.failed(f"asking the hub for the groups of {user}", e)
                return self.groups.get(user, [])
            self.groups = {**self.groups, user: list(groups)}
            self._groups_at[user] = now
        return self.groups[user]

    async def check_budgets(self, now):
        """Warn users near their budget; stop their paid servers once it is used up."""
        if self.budget_of is None:
            return
        by_user: dict[str, list] = {}
        for container in self.state.running.values():
            if container.started_at and container.container_id not in self.state.stop_reasons:
                by_user.setdefault(container.user, []).append(container)
        for user in (set(self.exhausted_since) | set(self.warned)) - set(by_user):
            self.exhausted_since.pop(user, None)
            self.warned.pop(user, None)
        for user, containers in by_user.items():
            try:
                await self._check_budget(user, containers, now)
            except Exception as e:
                self.failed(f"the budget check of {user}", e)

    async def _check_budget(self, user, containers, now):
        groups = await self.groups_of(user, now)
        status = await self.budget_of(user, groups, now)
        if status is None:
            self.exhausted_since.pop(user, None)
            return
        if status.exhausted:
            self.exhausted_since.setdefault(user, now)
        else:
            self.exhausted_since.pop(user, None)
        decision = await _call(
            self.config.budget_policy,
            spent=status.spent,
            limit=status.limit,
            unit=status.unit_label,
            now=now,
            exhausted_since=self.exhausted_since.get(user),
            grace=timedelta(seconds=self.config.budgets.grace),
            warn_fraction=Decimal(str(self.config.budgets.warn_fraction)),
        )
        if decision is None:
            self.warned.pop(user, None)
            return
        paid = [self.server_state(c) for c in containers if spends_from(status, c.price)]
        if decision.action == STOP:
            for server in paid:
                await self.stop(server, decision)
        elif decision.action == WARN:
            kind = "used up" if status.exhausted else "near"
            if self.warned.get(user) != kind and paid:
                self.warned[user] = kind
                self.log.warning("Budget of %s: %s", user, decision.reason)
                await self.record(server=paid[0], decision=decision, outcome="warned")

    async def stop(self, server: ServerState, decision, *, force: bool = False):
        """Stop `server` through the hub for `decision` (only decide in a dry run,
        unless `force`); log it and record it. A failed stop is counted."""
        if self.config.dry_run and not force:
            outcome = "would stop (dry run)"
        else:
            self.state.stop_reasons[server.container_id] = decision.reason
            if self.stop_reason is not None:
                await self.stop_reason(server.container_id, decision.reason)
            try:
                await self.hub.stop_server(server.user, server.server)
                outcome = "stopped"
            except Exception as e:
                self.state.stop_reasons.pop(server.container_id, None)
                if self.stop_reason is not None:
                    await self.stop_reason(server.container_id, None)
                self.state.policy_failed(e)
                outcome = f"failed: {e}"
        self.log.warning(
            "Policy %s: %s/%s %s (%s)",
            decision.policy,
            server.user,
            server.server,
            outcome,
            decision.reason,
        )
        await self.record(server=server, decision=decision, outcome=outcome)

    async def vouch(self, server: ServerState, now):
        try:
            await self.hub.report_activity(server.user, server.server, now)
        except Exception as e:
            self.state.policy_failed(e)
            self.log.warning(
                "Reporting activity of %s/%s failed: %s", server.user, server.server, e
            )
        else:
            self.log.debug("GPUs of %s/%s busy: activity reported", server.user, server.server)
