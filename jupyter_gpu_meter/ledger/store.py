"""The :class:`Ledger`: one object for the meter, the spawner and the CLI, over the stores.

Each aggregate the ledger keeps is a store of its own module, and each store
takes the one :class:`~.engine.Database` (engine, transactions, clock):

========================  ====================================================
:mod:`.engine`            the URL, the engine, transactions, schema revision
:mod:`.sessions`          sessions and their totals
:mod:`.rollups`           per-minute GPU statistics
:mod:`.processes`         sessions' GPU processes by process group
:mod:`.efficiency`        busy GPU-time and energy per session and per user
:mod:`.state`             the meter's state between runs
:mod:`.decisions`         policy decisions
:mod:`.budgets`           budgets, their changes, budget status
:mod:`.storage`           homes' and snapshots' sizes over time
:mod:`.ssh_keys`          users' SSH public keys
:mod:`.nodes`             GPU servers' agents, heartbeats, "node lost" (cluster mode)
========================  ====================================================

:class:`Ledger` composes them and delegates each method to its store, so
callers keep one object and one set of method names. Composition rather than
mixins: each store names what it needs (the budget store reads through the
session and storage stores, nothing else), can be built and tested alone, and
no store reaches another's tables through a shared ``self``.

Every method is blocking and uses a short transaction of its own: call them
off the event loop. A write that fails (database down, locked) raises; the
writes are idempotent, so the caller retries (see :class:`~.buffer.WriteBuffer`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime

from ..clock import utcnow
from .budgets import BudgetStore
from .decisions import DecisionStore
from .efficiency import EfficiencyStore
from .engine import DEFAULT_URL, Database, make_engine
from .nodes import NodeStore
from .processes import ProcessStore
from .rollups import RollupStore
from .sessions import SessionStore
from .ssh_keys import SSHKeyStore
from .state import StateStore
from .storage import STORAGE_MEASURED_KEY, StorageStore

__all__ = ["DEFAULT_URL", "STORAGE_MEASURED_KEY", "Ledger", "make_engine"]


def _delegate(store: str, method: Callable) -> Callable:
    """A Ledger method that calls `method` of the store in the attribute `store`."""
    name = method.__name__

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return getattr(getattr(self, store), name)(*args, **kwargs)

    call.__qualname__ = f"Ledger.{name}"
    return call


class Ledger:
    """Sessions, rollups, processes, state, decisions, budgets, storage, SSH keys, nodes
    (SQLite or PostgreSQL).

    ``Ledger("sqlite:///jupyter_gpu_meter.sqlite")`` or
    ``Ledger("postgresql+psycopg://jgm:secret@db/jgm")``. Nothing connects
    until the first call. `lock_timeout` (seconds) is how long a statement
    waits for a lock before it fails and the caller retries.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        clock: Callable[[], datetime] = utcnow,
        lock_timeout: float = 10.0,
    ):
        self.db = Database(url, clock=clock, lock_timeout=lock_timeout)
        self.session_store = SessionStore(self.db)
        self.rollup_store = RollupStore(self.db)
        self.process_store = ProcessStore(self.db)
        self.efficiency_store = EfficiencyStore(self.db)
        self.state_store = StateStore(self.db)
        self.decision_store = DecisionStore(self.db)
        self.storage_store = StorageStore(self.db)
        self.ssh_key_store = SSHKeyStore(self.db)
        self.node_store = NodeStore(self.db)
        self.budget_store = BudgetStore(
            self.db, self.session_store, self.storage_store, self.efficiency_store
        )

    @property
    def engine(self):
        """The SQLAlchemy engine."""
        return self.db.engine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.db.dialect

    @property
    def clock(self) -> Callable[[], datetime]:
        """What stamps the meter state's ``updated_at``."""
        return self.db.clock

    @clock.setter
    def clock(self, clock: Callable[[], datetime]) -> None:
        self.db.clock = clock

    @property
    def url(self) -> str:
        """The database URL with its password hidden, for logs and messages."""
        return self.db.url

    def __repr__(self):
        return f"<Ledger {self.url}>"

    def close(self) -> None:
        """Close the pooled connections."""
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # schema
    upgrade = _delegate("db", Database.upgrade)
    check_revision = _delegate("db", Database.check_revision)
    ensure_schema = _delegate("db", Database.ensure_schema)

    # sessions and totals
    open_session = _delegate("session_store", SessionStore.open_session)
    close_session = _delegate("session_store", SessionStore.close_session)
    touch_sessions = _delegate("session_store", SessionStore.touch_sessions)
    set_stop_reason = _delegate("session_store", SessionStore.set_stop_reason)
    get_session = _delegate("session_store", SessionStore.get_session)
    open_sessions = _delegate("session_store", SessionStore.open_sessions)
    history = _delegate("session_store", SessionStore.history)
    sessions = _delegate("session_store", SessionStore.sessions)
    usage_sums = _delegate("session_store", SessionStore.usage_sums)
    last_active = _delegate("session_store", SessionStore.last_active)

    # rollups
    add_rollups = _delegate("rollup_store", RollupStore.add_rollups)
    rollups = _delegate("rollup_store", RollupStore.rollups)
    utilization_of = _delegate("rollup_store", RollupStore.utilization_of)
    recent_minutes = _delegate("rollup_store", RollupStore.recent_minutes)

    # processes and efficiency
    add_process_usage = _delegate("process_store", ProcessStore.add_process_usage)
    process_groups = _delegate("process_store", ProcessStore.process_groups)
    efficiency_of = _delegate("efficiency_store", EfficiencyStore.efficiency_of)
    efficiency_by_user = _delegate("efficiency_store", EfficiencyStore.efficiency_by_user)

    # meter state
    get_state = _delegate("state_store", StateStore.get_state)
    set_state = _delegate("state_store", StateStore.set_state)
    record_stopped_container = _delegate("state_store", StateStore.record_stopped_container)
    stopped_containers = _delegate("state_store", StateStore.stopped_containers)
    forget_stopped_containers = _delegate("state_store", StateStore.forget_stopped_containers)

    # storage
    add_storage_periods = _delegate("storage_store", StorageStore.add_storage_periods)
    storage_ends = _delegate("storage_store", StorageStore.storage_ends)
    storage_periods = _delegate("storage_store", StorageStore.storage_periods)
    storage_sums = _delegate("storage_store", StorageStore.storage_sums)
    storage_now = _delegate("storage_store", StorageStore.storage_now)

    # policy decisions
    record_decision = _delegate("decision_store", DecisionStore.record_decision)
    decisions = _delegate("decision_store", DecisionStore.decisions)

    # budgets
    set_budget = _delegate("budget_store", BudgetStore.set_budget)
    grant_budget = _delegate("budget_store", BudgetStore.grant_budget)
    remove_budget = _delegate("budget_store", BudgetStore.remove_budget)
    budgets = _delegate("budget_store", BudgetStore.budgets)
    get_budget = _delegate("budget_store", BudgetStore.get_budget)
    budget_changes = _delegate("budget_store", BudgetStore.budget_changes)
    budget_status = _delegate("budget_store", BudgetStore.budget_status)
    user_budget_status = _delegate("budget_store", BudgetStore.user_budget_status)

    # SSH keys
    ssh_keys = _delegate("ssh_key_store", SSHKeyStore.ssh_keys)
    add_ssh_key = _delegate("ssh_key_store", SSHKeyStore.add_ssh_key)
    remove_ssh_key = _delegate("ssh_key_store", SSHKeyStore.remove_ssh_key)

    # nodes (cluster mode)
    heartbeat = _delegate("node_store", NodeStore.heartbeat)
    nodes = _delegate("node_store", NodeStore.nodes)
    get_node = _delegate("node_store", NodeStore.get_node)
    mark_lost = _delegate("node_store", NodeStore.mark_lost)
    clear_lost = _delegate("node_store", NodeStore.clear_lost)
    sweep_lost_nodes = _delegate("node_store", NodeStore.sweep_lost_nodes)
    node_lost_sessions = _delegate("node_store", NodeStore.node_lost_sessions)
    reopen_lost_session = _delegate("node_store", NodeStore.reopen_lost_session)
    end_lost_session_earlier = _delegate("node_store", NodeStore.end_lost_session_earlier)
