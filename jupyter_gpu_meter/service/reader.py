"""What the pages, the API and /metrics read: the ledger, aggregated, off the event loop.

:class:`UsageReader` has blocking methods (ledger reads plus the pure
aggregation of :mod:`jupyter_gpu_meter.usage`) and :meth:`UsageReader.call`,
which runs one of them in the reader's own thread pool: reads never wait
behind the meter's ledger writes, and never block the event loop.
:class:`LiveState` gives the web layer the running meter's state (the last
GPU sample, the running containers) as a read-only view, for ``api/gpus`` and
/metrics.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from traitlets import Float, Int
from traitlets.config import Configurable

from .. import usage
from ..clock import utcnow
from ..sessions import ManagedContainer
from .query import Page, paginate
from .state import MeterState, MeterView

#: the most items one page of the API may hold
MAX_LIMIT = 1000


class UsagePages(Configurable):
    """Settings of the meter's usage pages and API (``c.UsagePages.…``)."""

    refresh_interval = Float(
        5.0,
        min=1.0,
        help="""
        Seconds between two refreshes of the live parts of the pages (running
        sessions' cost, the GPUs on the admin page), e.g. 5. Each refresh is one
        API request per open page.
        """,
    ).tag(config=True)

    history_page_size = Int(
        25,
        min=1,
        max=MAX_LIMIT,
        help="Sessions per page of the session history on the user page, e.g. 25.",
    ).tag(config=True)

    users_page_size = Int(
        100,
        min=1,
        max=MAX_LIMIT,
        help="Users per page of the admin page's table, e.g. 100.",
    ).tag(config=True)

    read_threads = Int(
        4,
        min=1,
        help="""
        Threads that read the ledger for pages, API and metrics (apart from the
        meter's one writer thread), e.g. 4: that many requests read at once.
        """,
    ).tag(config=True)

    metrics_cache_seconds = Float(
        10.0,
        min=0.0,
        help="""
        How long /metrics reuses its per-user totals before reading the ledger
        again, in seconds, e.g. 10 (0: every scrape reads it).
        """,
    ).tag(config=True)


@dataclass
class UserView:
    """One user's usage page, and ``api/usage``."""

    user: str
    now: datetime
    since: datetime | None
    until: datetime | None
    currency: str
    #: over [since, until) (all time when neither is given)
    in_range: usage.Totals
    this_month: usage.Totals
    all_time: usage.Totals
    running: list[usage.SessionUsage]
    history: Page
    daily: list[tuple[date, Decimal]]
    #: the budget that applies (:func:`~jupyter_gpu_meter.budgets.budget_view`), None: no limit
    budget: dict | None = None
    #: the user's volumes at the last storage measurement (:func:`storage_now`)
    storage_now: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "user": self.user,
            "as_of": usage.isoformat(self.now),
            "since": usage.isoformat(self.since),
            "until": usage.isoformat(self.until),
            "currency": self.currency,
            "totals": self.in_range.to_json(self.currency),
            "this_month": {
                "since": usage.isoformat(usage.month_start(self.now)),
                **self.this_month.to_json(self.currency),
            },
            "all_time": self.all_time.to_json(self.currency),
            "budget": self.budget,
            "running": [item.to_json() for item in self.running],
            "sessions": self.history.to_json(lambda item: item.to_json()),
            "daily_gpu_hours": [
                {"date": day.isoformat(), "gpu_hours": usage.decimal_string(hours)}
                for day, hours in self.daily
            ],
            "storage_now": self.storage_now,
        }


def storage_now(measured_at, periods, size_warning: int | None) -> dict:
    """The volumes of the last storage measurement, as the API gives them. Pure.

    `periods`: their last periods (:meth:`~jupyter_gpu_meter.ledger.Ledger.storage_now`).
    A home above `size_warning` bytes (None: no limit) is flagged.
    """
    return {
        "measured_at": usage.isoformat(measured_at),
        "measured_at_text": usage.format_time(measured_at),
        "size_warning_bytes": size_warning,
        "bytes": sum(p.size_bytes for p in periods),
        "volumes": [
            {
                "name": p.volume,
                "kind": p.kind,
                "size_bytes": p.size_bytes,
                "over_size_warning": size_warning is not None
                and p.kind == "home"
                and p.size_bytes > size_warning,
            }
            for p in periods
        ],
    }


@dataclass
class UsersView:
    """Every user's totals: the admin page, and ``api/users``."""

    now: datetime
    since: datetime | None
    until: datetime | None
    currency: str
    sort: str
    order: str
    totals: usage.Totals
    users: Page
    #: user -> their running sessions (for the stop buttons)
    running: dict[str, list] = field(default_factory=dict)
    #: user -> bytes of their volumes at the last storage measurement
    storage_bytes: dict[str, int] = field(default_factory=dict)
    #: users with a home above ``c.HomeVolumes.size_warning``
    storage_over: frozenset = frozenset()

    def to_json(self) -> dict:
        return {
            "as_of": usage.isoformat(self.now),
            "since": usage.isoformat(self.since),
            "until": usage.isoformat(self.until),
            "currency": self.currency,
            "sort": self.sort,
            "order": self.order,
            "totals": {"users": self.users.total, **self.totals.to_json(self.currency)},
            "users": self.users.to_json(
                lambda row: {
                    "user": row.user,
                    "last_active": usage.isoformat(row.last_active),
                    **row.totals.to_json(self.currency),
                    "running_servers": [s.server for s in self.running.get(row.user, [])],
                    "running_sessions": [  # with the node each runs on ("" on one host)
                        {"server": s.server, "node": s.node} for s in self.running.get(row.user, [])
                    ],
                    "storage_bytes": self.storage_bytes.get(row.user, 0),
                    "storage_over_size_warning": row.user in self.storage_over,
                }
            ),
        }


class UsageReader:
    """Reads usage from the ledger for one request at a time, in its own threads.

    `clock` gives `now` for running sessions; `budget` (user -> dict or None)
    is where remaining budgets come from; `size_warning` (bytes, or None) is
    ``c.HomeVolumes.size_warning``, to flag large homes.
    """

    def __init__(
        self,
        ledger,
        *,
        currency: str,
        settings: UsagePages | None = None,
        clock: Callable[[], datetime] = utcnow,
        budget: Callable[[str], dict | None] | None = None,
        executor=None,
        size_warning: int | None = None,
    ):
        self.size_warning = size_warning
        self.ledger = ledger
        self.currency = currency
        self.settings = settings or UsagePages()
        self.clock = clock
        self.budget = budget or (lambda user: None)
        self.executor = executor or ThreadPoolExecutor(
            self.settings.read_threads, thread_name_prefix="gpu-meter-read"
        )
        self._metrics_lock = threading.Lock()
        self._metrics_cache: tuple[float, tuple] | None = None

    async def call(self, method: Callable, *args, **kwargs):
        """`method(*args, **kwargs)` in the reader's threads, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(method, *args, **kwargs))

    def close(self):
        self.executor.shutdown(wait=False)

    # --- blocking reads -------------------------------------------------------

    def user_view(
        self,
        user: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> UserView:
        """`user`'s totals, running sessions, history (newest first, one page) and days.

        Reads what it shows: totals added up by the database, one page of the
        history, the running sessions, the last 30 days, and the rollups of the
        sessions shown; not the user's whole history.
        """
        now = self.clock()
        limit = self.settings.history_page_size if limit is None else limit
        total, page = self.ledger.history(
            user=user, now=now, since=since, until=until, limit=limit, offset=offset
        )
        running = self.ledger.open_sessions(user=user)
        shown = [s.container_id for s in [*page, *running] if s.gpu_count]
        minutes = self.ledger.utilization_of(shown)
        measured = self.ledger.efficiency_of(s.id for s in [*page, *running])
        # each shown GPU session's process groups: one small query each, a page at most
        groups = {s.id: self.ledger.process_groups(s.id) for s in [*page, *running] if s.gpu_count}

        def with_usage(s):
            extra = {"measured": measured.get(s.id), "processes": groups.get(s.id, ())}
            return usage.session_usage(s, now=now, minutes=minutes.get(s.container_id), **extra)

        def totals(since=None, until=None):
            span = {"user": user, "since": since, "until": until}
            sums, sessions = self.ledger.usage_sums(**span)
            extra = {"storage": self.ledger.storage_sums(**span), "sums": sums}
            extra["efficiency"] = self.ledger.efficiency_by_user(**span)
            return usage.totals(sessions, now=now, since=since, until=until, **extra)

        all_time = totals()

        days = usage.DAILY_DAYS
        recent = self.ledger.sessions(user=user, since=usage.daily_start(now, days))
        return UserView(
            user=user,
            now=now,
            since=since,
            until=until,
            currency=self.currency,
            in_range=all_time if since is None and until is None else totals(since, until),
            this_month=totals(usage.month_start(now)),
            all_time=all_time,
            running=[with_usage(s) for s in running],
            history=Page([with_usage(s) for s in page], total, limit, offset),
            daily=usage.daily_gpu_hours(recent, now=now, days=days),
            budget=self.budget(user),
            storage_now=storage_now(*self.ledger.storage_now(user=user), self.size_warning),
        )

    def users_view(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        sort: str = "gpu_hours",
        order: str = "desc",
        limit: int | None = None,
        offset: int = 0,
    ) -> UsersView:
        """Every user in the ledger: totals over [since, until), last active, sorted, one page."""
        now = self.clock()
        # the database adds up the closed sessions; only the others are read here
        span = {"since": since, "until": until}
        sums, sessions = self.ledger.usage_sums(**span)
        extra = {"storage": self.ledger.storage_sums(**span), "sums": sums}
        extra["efficiency"] = self.ledger.efficiency_by_user(**span)
        in_range = usage.totals_by_user(sessions, now=now, **span, **extra)
        rows = usage.user_table(in_range, self.ledger.last_active(now))
        rows = usage.sort_users(rows, sort, descending=order == "desc", currency=self.currency)
        limit = self.settings.users_page_size if limit is None else limit
        page = paginate(rows, limit=limit, offset=offset)
        grand = usage.Totals()
        for row in rows:
            grand = grand + row.totals
        shown = {row.user for row in page.items}
        running: dict[str, list] = {}
        opened = [s for s in sessions if s.running] if until is None else None  # read by usage_sums
        for session in opened if opened is not None else self.ledger.open_sessions():
            if session.user in shown:
                running.setdefault(session.user, []).append(session)
        sizes: dict[str, int] = {}
        over = set()
        for period in self.ledger.storage_now()[1]:
            sizes[period.user] = sizes.get(period.user, 0) + period.size_bytes
            limit = self.size_warning
            if limit is not None and period.kind == "home" and period.size_bytes > limit:
                over.add(period.user)
        return UsersView(
            now,
            since,
            until,
            self.currency,
            sort,
            order,
            grand,
            page,
            running,
            sizes,
            frozenset(over),
        )

    def export(
        self,
        *,
        user: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> Page:
        """Invoice lines: sessions' (see :func:`jupyter_gpu_meter.usage.export_row`),
        oldest first, then one per volume and storage price
        (:func:`~jupyter_gpu_meter.usage.storage_row`), by user and volume."""
        now = self.clock()
        sessions = self.ledger.sessions(user=user, since=since, until=until)
        measured = {}
        for i in range(0, len(sessions), 1000):  # SQLite takes at most 32,766 bound values
            measured.update(self.ledger.efficiency_of(s.id for s in sessions[i : i + 1000]))
        rows = usage.export_rows(sessions, now=now, since=since, until=until, measured=measured)
        lines = self.ledger.storage_sums(user=user, since=since, until=until, by_volume=True)
        rows += [usage.storage_row(line) for line in lines]
        return paginate(rows, limit=len(rows) if limit is None else limit, offset=offset)

    def metrics_totals(self) -> tuple:
        """All-time (GPU-seconds per user, charges per user and currency, storage,
        efficiency), cached briefly; storage is :class:`StorageMetrics`, efficiency
        the user rows of :func:`~jupyter_gpu_meter.usage.usage_by_user`."""
        with self._metrics_lock:
            cached = self._metrics_cache
            if cached and time.monotonic() - cached[0] < self.settings.metrics_cache_seconds:
                return cached[1]
            now = self.clock()
            seconds: dict[str, Decimal] = {}
            charges: dict[tuple[str, str], Decimal] = {}
            sums, sessions = self.ledger.usage_sums()
            efficiency = self.ledger.efficiency_by_user(since=None, until=None)
            rows = usage.usage_by_user(sessions, now=now, sums=sums, efficiency=efficiency)
            for row in rows:
                seconds[row.user] = seconds.get(row.user, Decimal(0)) + row.gpu_hours * 3600
                charges[(row.user, row.currency)] = row.charges
            measured_at, volumes = self.ledger.storage_now()
            storage = StorageMetrics(measured_at, volumes, self.ledger.storage_sums())
            result = (seconds, charges, storage, rows)
            self._metrics_cache = (time.monotonic(), result)
            return result


@dataclass(frozen=True)
class StorageMetrics:
    """Storage for /metrics: the last measurement and all-time sums per user."""

    measured_at: datetime | None
    #: the last measurement's periods (:meth:`~jupyter_gpu_meter.ledger.Ledger.storage_now`)
    volumes: list
    #: :class:`~jupyter_gpu_meter.ledger.StorageSum` per user and currency, all time
    sums: list


class LiveState:
    """What the running meter holds in memory, for the web layer: a typed, read-only door.

    `state` is the meter's :class:`~jupyter_gpu_meter.service.state.MeterState`,
    owned by the event loop the handlers run on; the web layer reads it only
    through :meth:`view` (a frozen snapshot), never changes it. `health` gives
    ``api/health``'s dict; `inventory_source` (a
    :class:`~jupyter_gpu_meter.gpus.GPUInventory`, or None) lists the GPUs
    when there is no sample.
    """

    def __init__(
        self,
        state: MeterState,
        *,
        health: Callable[[], dict] | None = None,
        inventory_source=None,
    ):
        self.state = state
        self._health = health or state.health
        self._source = inventory_source
        self._inventory = None
        self._inventory_at = 0.0

    def view(self) -> MeterView:
        return self.state.view()

    def tick(self):
        """The last sample (:class:`~jupyter_gpu_meter.sampler.Tick`), None before one."""
        return self.state.last_tick

    def running(self) -> Mapping[str, ManagedContainer]:
        """container id -> :class:`~jupyter_gpu_meter.sessions.ManagedContainer` (read-only)."""
        return self.view().running

    def health(self) -> dict:
        return self._health()

    def inventory(self):
        """The GPUs, when there is no sample (GPU sampling off). Blocking; cached 60 s."""
        if self._source is None:
            return None
        if self._inventory is None or time.monotonic() - self._inventory_at > 60:
            self._inventory = self._source.discover()
            self._inventory_at = time.monotonic()
        return self._inventory
