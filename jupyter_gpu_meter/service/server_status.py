"""``GET api/server-status``: one running server now, for JupyterLab's status bar.

Called every few seconds by every open notebook, so it reads what the meter
holds in memory: the running container (its GPUs), the last GPU sample, the
policy runner's idle times. The ledger is read only through two caches
(:class:`StatusSource`): the session's record once per container (its start
and price snapshot never change while it runs: the charge is computed as
``api/usage`` computes it, to the digit) and the user's budget for
``c.ServerStatus.budget_cache_seconds``. Deadlines come from the policies'
own rules (:mod:`jupyter_gpu_meter.deadlines`). Words and numbers are
formatted here, by the usage core's helpers, never in the browser.

The caches are owned by the event loop: the handlers run on it, the ledger
reads run in the reader's threads and hand their answers back to it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

from tornado import web
from tornado.log import app_log
from traitlets import Float, Int
from traitlets.config import Configurable

from .. import policies
from ..deadlines import budget_deadline, runs_out_at, server_deadlines, spend_rate
from ..pricing import charge
from ..usage import format_amount, format_money, format_percent, format_rate, isoformat
from .api import APIHandler
from .gpus import format_gib
from .state import error_class

#: the query arguments api/server-status takes (``_xsrf``: a cookie-authenticated fetch's)
PARAMETERS = ("server", "user", "_xsrf")
#: how long a server name may be (JupyterHub's database column)
MAX_NAME = 255


class ServerStatus(Configurable):
    """Settings of ``api/server-status`` (``c.ServerStatus.…``)."""

    warn_lead_time = Int(
        900,
        min=0,
        help="""
        Seconds before a policy stops a server from which ``api/server-status``
        marks the deadline ``"warn": true`` (JupyterLab's status bar shows the
        warning), e.g. 900 (15 minutes, the default). 0: only when due.
        """,
    ).tag(config=True)

    budget_cache_seconds = Float(
        15.0,
        min=0.0,
        help="""
        How long ``api/server-status`` reuses a user's budget (one ledger read,
        shared by all their notebooks) before reading it again, in seconds,
        e.g. 15 (the default; 0: every call reads it). What is left is that
        much out of date at most; the budget policy itself looks every
        ``c.Policies.interval`` (30 s).
        """,
    ).tag(config=True)


class StatusSource:
    """What ``api/server-status`` reads of the running meter: the policy runner
    (:class:`~jupyter_gpu_meter.service.policy_runner.PolicyRunner`: settings,
    idle times, since when budgets are used up, users' groups) and the ledger,
    through caches the event loop owns."""

    def __init__(self, runner, ledger, *, settings: ServerStatus | None = None):
        self.runner = runner
        self.ledger = ledger
        self.settings = settings or ServerStatus()
        #: container id -> its session's ledger record (never changes while it runs)
        self._sessions: dict[str, object] = {}
        #: user -> (monotonic time, meter time, BudgetStatus or None)
        self._budgets: dict[str, tuple] = {}
        #: user -> the ledger read under way (calls at once share it)
        self._reading: dict[str, asyncio.Future] = {}

    @classmethod
    def from_meter(cls, meter, live) -> StatusSource:
        """The running meter's; a meter without a policy runner (tests' stand-ins) gets a
        fresh one on its state, which has seen no GPU idle and no budget used up."""
        parent = meter if hasattr(meter, "config") else None
        runner = getattr(meter, "runner", None)
        if runner is None:
            from .policy_runner import Policies, PolicyRunner

            clock = getattr(meter, "clock", None)
            runner = PolicyRunner(Policies(parent=parent), live.state, None, None, None, clock)
        return cls(runner, meter.ledger, settings=ServerStatus(parent=parent))

    async def session(self, container, reader):
        """The ledger's record of `container`'s session (read once), or None while the
        ledger has none (its write is queued, or the ledger refused it)."""
        found = self._sessions.get(container.container_id)
        if found is None:
            records = await reader.call(self.ledger.open_sessions, user=container.user)
            running = self.runner.state.running
            self._sessions = {
                **{k: v for k, v in self._sessions.items() if k in running},
                **{r.container_id: r for r in records if r.container_id in running},
            }
            found = self._sessions.get(container.container_id)
        return found

    async def budget(self, user: str, reader) -> tuple[datetime, object]:
        """(when, `user`'s :class:`~jupyter_gpu_meter.budgets.BudgetStatus` or None then),
        read at most once per ``budget_cache_seconds``; calls at once share one read."""
        cached = self._budgets.get(user)
        if cached and time.monotonic() - cached[0] < self.settings.budget_cache_seconds:
            return cached[1], cached[2]
        reading = self._reading.get(user)
        if reading is None:
            reading = asyncio.ensure_future(self._read_budget(user, reader))
            self._reading[user] = reading
            reading.add_done_callback(lambda _: self._reading.pop(user, None))
        return await asyncio.shield(reading)

    async def _read_budget(self, user: str, reader):
        at = reader.clock()
        groups = self.runner.groups.get(user, [])  # as the policy runner last asked the hub
        status = await reader.call(self.ledger.user_budget_status, user, groups, at)
        self._budgets = {
            **{k: v for k, v in self._budgets.items() if k in self._users()},
            user: (time.monotonic(), at, status),
        }
        return at, status

    def _users(self) -> set[str]:
        return {c.user for c in self.runner.state.running.values()}

    def deadlines(self, container, *, now, status=None, status_at=None, prices=()) -> tuple:
        """(budget dict or None, deadlines as JSON) of `container` at `now`."""
        config = self.runner.config
        if config.dry_run:  # decided, never acted on: no stop to announce
            deadlines = []
        else:
            server = self.runner.server_state(container)
            deadline = None
            if status is not None and config.budget_policy is policies.budget:
                deadline = budget_deadline(
                    status,
                    container.price,
                    runs_out=runs_out_at(status, spend_rate(status, prices), status_at),
                    exhausted_since=self.runner.exhausted_since.get(container.user),
                    grace=timedelta(seconds=config.budgets.grace),
                )
            deadlines = server_deadlines(
                server,
                idle_timeout=config.for_profile(server.profile, "gpu_idle_timeout")
                if config.gpu_idle_policy is policies.gpu_idle
                else None,
                max_age=config.for_profile(server.profile, "max_age")
                if config.max_age_policy is policies.max_age
                else None,
                budget=deadline,
            )
        lead = timedelta(seconds=self.settings.warn_lead_time)
        return [deadline.to_json(now, lead) for deadline in deadlines]


def budget_json(status, *, runs_out: datetime | None, now: datetime) -> dict | None:
    """What is left of the budget in `status`, and when it runs out (None: no budget). Pure."""
    if status is None:
        return None
    unit = status.unit_label
    left = None if runs_out is None else max(runs_out - now, timedelta(0))
    return {
        "unit": unit,
        "left": format_amount(status.remaining, unit, code=False, grouping=False),
        "left_text": format_amount(status.remaining, unit),
        "runs_out_at": isoformat(runs_out),
        "runs_out_in_seconds": None if left is None else int(left.total_seconds()),
    }


def gpus_json(container, tick) -> tuple[list[dict], dict]:
    """(each of the server's GPUs with its last reading, the words for all of them). Pure.

    Utilization is the mean over the server's GPUs, memory their sum; None and
    "–" without a reading (GPU sampling off, or a GPU the sample lacks).
    """
    readings = {gpu.uuid: gpu for gpu in (tick.gpus if tick is not None else ())}
    rows = []
    for uuid in container.gpu_uuids:
        gpu = readings.get(uuid)
        rows.append(
            {
                "index": gpu.index if gpu else None,
                "uuid": uuid,
                "model": gpu.model if gpu else container.gpu_model,
                "utilization_percent": gpu.utilization if gpu else None,
                "memory_used_bytes": gpu.memory_used_bytes if gpu else None,
                "memory_total_bytes": gpu.memory_total_bytes if gpu else None,
            }
        )
    utils = [row["utilization_percent"] for row in rows]
    known = bool(rows) and all(row["memory_total_bytes"] is not None for row in rows)
    count = len(rows)
    return rows, {
        "gpus_text": f"{count} × {container.gpu_model}" if count else "no GPU",
        "utilization_text": format_percent(
            sum(utils) / count if count and None not in utils else None
        ),
        "memory_text": f"{format_gib(sum(r['memory_used_bytes'] for r in rows) if known else None)}"
        f" / {format_gib(sum(r['memory_total_bytes'] for r in rows) if known else None)}"
        if count
        else "",
    }


def status_json(container, *, session, tick, now: datetime) -> dict:
    """The running server `container` at `now`: GPUs, readings, price and cost so far. Pure.

    Cost and start are the ledger's `session`'s (its record), as ``api/usage``
    has them; the container's own (Docker's start, its labels' price) while
    the ledger has no session for it.
    """
    price = session.price if session is not None else container.price
    started_at = session.started_at if session is not None else container.started_at
    rows, texts = gpus_json(container, tick)
    result = {
        "user": container.user,
        "server": container.server,
        "running": True,
        "started_at": isoformat(started_at),
        "measured_at": isoformat(tick.at) if tick is not None else None,
        # the image's display name (its label) as the ledger recorded it
        "image": session.image if session is not None else container.image,
        "gpus": rows,
        **texts,
    }
    if price is None:  # a container without price labels, unbilled: no money to show
        return {
            **result,
            **dict.fromkeys(("currency", "price_per_hour", "cost_so_far")),
            **dict.fromkeys(("price_per_hour_text", "cost_so_far_text"), ""),
        }
    cost, rate, currency = charge(price, started_at, now), price.hourly_rate, price.currency
    return {
        **result,
        "currency": currency,
        "price_per_hour": format_money(rate, currency, code=False, grouping=False, exact=True),
        "price_per_hour_text": format_rate(rate, currency, per="h"),
        "cost_so_far": format_money(cost, currency, code=False, grouping=False),
        "cost_so_far_text": format_money(cost, currency),
    }


def check_server_name(text: str) -> str:
    """A server name from the query: at most 255 characters, no "/" and no control
    characters ("" is the default server); raises ValueError saying so."""
    if len(text) > MAX_NAME or "/" in text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(
            f"server={text[:40]!r} is not a server name: give one of your server's names "
            f'(at most {MAX_NAME} characters, no "/"), or "" (or nothing) for the default server'
        )
    return text


class ServerStatusHandler(APIHandler):
    """``GET api/server-status?server=<name>``: the caller's running server now
    (admins and read-all holders: anyone's, with ``&user=``)."""

    def _parameters(self) -> tuple[str, str]:
        given = set(self.request.query_arguments)
        unknown = sorted(given - set(PARAMETERS))
        if unknown:
            raise web.HTTPError(
                400,
                "%s",
                f"unknown parameter(s) {', '.join(unknown)[:200]}: api/server-status takes "
                'server (a server name, "" for the default server) and user (whose; for '
                "hub admins and holders of custom:gpu-meter:read-all)",
            )
        for name in ("server", "user"):
            if len(self.get_query_arguments(name)) > 1:
                raise web.HTTPError(400, "give %s at most once", name)
        try:
            server = check_server_name(self.query("server") or "")
        except ValueError as e:
            raise web.HTTPError(400, "%s", str(e)) from None
        return self.subject(), server

    async def get(self):
        user, server = self._parameters()
        context = self.context
        source, reader = context.status, context.reader
        view = context.live.view()
        running = [c for c in view.running.values() if c.user == user and c.started_at]
        container = next((c for c in running if c.server == server), None)
        if container is None:
            names = ", ".join(repr(c.server) for c in sorted(running, key=lambda c: c.server))
            raise web.HTTPError(
                404,
                "%s",
                f"{user} has no running server {server!r} metered here "
                f"(running: {names or 'none'}; the default server is '')",
            )
        try:
            session = await source.session(container, reader)
            status_at, status = await source.budget(user, reader)
        except Exception as e:  # the ledger (a database) is down: the loops keep the writes
            app_log.warning("api/server-status: reading the ledger failed: %r", e)
            raise web.HTTPError(
                503, "the meter cannot read its ledger now (%s); try again", error_class(e)
            ) from None
        now = reader.clock()
        prices = [c.price for c in running]
        budget_at = runs_out_at(status, spend_rate(status, prices), status_at) if status else None
        answer = status_json(container, session=session, tick=view.last_tick, now=now)
        answer["budget"] = budget_json(status, runs_out=budget_at, now=now)
        answer["deadlines"] = source.deadlines(
            container, now=now, status=status, status_at=status_at, prices=prices
        )
        self.write_json(answer)
