"""The running meter's state: one object, owned by the meter's event loop.

Who owns what:

- :class:`MeterState` is changed only on the event loop: the Docker events
  handler and the reconcile (:meth:`MeterState.apply`), the sampler's tick
  (:meth:`MeterState.sampled`), the ledger flush (:meth:`MeterState.open_failed`)
  and the policy runner (stop reasons, error counts).
- The ledger thread never touches it. :class:`~jupyter_gpu_meter.sessions.SessionTracker`
  reads Docker and the ledger there and returns a
  :class:`~jupyter_gpu_meter.sessions.SessionChanges`; the loop applies it.
- The web layer (handlers run on the same loop) reads it through
  :class:`MeterView`, a frozen snapshot: containers, the last sample, counters.
- One value is read from another thread: the events thread reads
  :attr:`MeterState.events_since_ns`, an int the loop replaces whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from ..sessions import (
    REASON_KILLED,
    REASON_STOPPED,
    Closing,
    ManagedContainer,
    Opening,
    SessionChanges,
    reason_exited,
)
from ..usage import isoformat

#: a database's own error code: SQLSTATE (PostgreSQL) or SQLITE_BUSY and friends
_ERROR_CODE = re.compile(r"[A-Z0-9_]{1,40}")


def _class_name(error: BaseException) -> str:
    cls = type(error)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def error_summary(error: BaseException | None) -> str:
    """What may be shown of `error` to anyone: its class, its database driver's error
    class and code; never its message, which for a database error holds the SQL and
    its parameters (user names, times). Pure.

    ``sqlalchemy.exc.OperationalError (psycopg.OperationalError SQLSTATE 08006)``;
    ``""`` for None. The log has the whole error.
    """
    if error is None:
        return ""
    summary = _class_name(error)
    cause = getattr(error, "orig", None)  # a SQLAlchemy DBAPIError: the driver's error
    if isinstance(cause, BaseException):
        detail = _class_name(cause)
        sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        name = getattr(cause, "sqlite_errorname", None)
        for label, code in (("SQLSTATE ", sqlstate), ("", name)):
            if isinstance(code, str) and _ERROR_CODE.fullmatch(code):
                detail += f" {label}{code}"
        summary += f" ({detail})"
    return summary


def error_class(error: BaseException) -> str:
    """What health and metrics say about an error: its class, never its message.

    A database error's message holds the statement's parameters (user names,
    prices); its class says what kind of failure it was, e.g. ``DataError``.
    """
    return type(error).__name__


@dataclass(frozen=True)
class OpenFailure:
    """A running server whose session the ledger refused to open: it runs unbilled."""

    container: ManagedContainer
    #: the error's class, e.g. "DataError" (its message may hold SQL parameters)
    error: str
    at: datetime


@dataclass(frozen=True)
class LedgerWrites:
    """The ledger writes one applied :class:`SessionChanges` needs, in order."""

    opened: tuple[Opening, ...] = ()
    closed: tuple[Closing, ...] = ()
    #: (container ids, when) seen running, or None
    touched: tuple[tuple[str, ...], datetime] | None = None
    #: the Docker event time to resume from, or None
    events_since_ns: str | None = None
    #: ids of the containers the meter had not known running
    new: tuple[str, ...] = ()
    #: "node lost" sessions to reopen, and to end earlier (cluster mode: see SessionChanges)
    reopened: tuple[str, ...] = ()
    ended_earlier: tuple[Closing, ...] = ()
    #: the hub's records of stopped containers to forget, once the closes are written
    forgotten: tuple[str, ...] = ()


@dataclass(frozen=True)
class MeterView:
    """A read-only snapshot of :class:`MeterState` for the web layer (pages, API, metrics)."""

    #: container id -> the running container
    running: MappingProxyType
    #: the last GPU sample (:class:`~jupyter_gpu_meter.sampler.Tick`), None before one
    last_tick: object
    #: containers whose session the ledger refused, still running (being stopped)
    unbilled: MappingProxyType
    session_open_failures: int
    last_session_open_failure: str
    policy_errors: int
    last_policy_error: str
    #: the isolation breaches of the last tick: (:class:`~jupyter_gpu_meter.isolation.Breach`,
    #: when first seen), by GPU then PID
    breaches: tuple = ()
    #: how many breaches appeared since the meter started
    breaches_total: int = 0


@dataclass
class MeterState:
    """What the running meter knows now. Owner: the event loop; no other thread changes it.

    The ledger thread computes :class:`~jupyter_gpu_meter.sessions.SessionChanges`
    and the loop applies them here. Readers on the loop may read the
    attributes; the web layer takes a :meth:`view`.
    """

    #: container id -> ManagedContainer, for the containers running now
    running: dict[str, ManagedContainer] = field(default_factory=dict)
    #: container id -> the signal of the last kill event, until it dies
    kills: dict[str, int] = field(default_factory=dict)
    #: container id -> why a policy is stopping it ("GPUs idle for 30 min"), until it dies
    stop_reasons: dict[str, str] = field(default_factory=dict)
    #: the last GPU sample, None before one (or with GPU sampling off)
    last_tick: object = None
    #: container id -> OpenFailure: running servers the ledger refused to open a session for
    unbilled: dict[str, OpenFailure] = field(default_factory=dict)
    #: how many session opens the ledger refused for good, since the meter started
    session_open_failures: int = 0
    #: the error class of the last one ("" if none)
    last_session_open_failure: str = ""
    #: how many policy steps failed (one user's or one server's), since the meter started
    policy_errors: int = 0
    #: the error class of the last one ("" if none)
    last_policy_error: str = ""
    #: when the last completed policy check began (the meter's clock), None before one
    policies_checked_at: datetime | None = None
    #: the isolation breaches of the last tick: (Breach, when first seen), by GPU then
    #: PID; replaced whole (jupyter_gpu_meter.service.isolation_check)
    breaches: tuple = ()
    #: how many breaches appeared since the meter started
    breaches_total: int = 0
    #: the time (ns since the epoch) of the last Docker event handled; replaced whole,
    #: read by the events thread when it reconnects
    events_since_ns: int = 0

    # --- sessions (from the ledger thread's SessionChanges) ---------------------

    def apply(self, changes: SessionChanges) -> LedgerWrites:
        """Apply what a reconcile or an event found; returns the ledger writes to queue."""
        opened = changes.opened
        new = [
            o.container.container_id for o in opened if o.container.container_id not in self.running
        ]
        if changes.running is not None:  # a reconcile: Docker's whole list
            self.running = {c.container_id: c for c in changes.running}
            self.unbilled = {k: v for k, v in self.unbilled.items() if k in self.running}
            # opens are idempotent: reopening what is open is harmless and mends a
            # lost write; a session the ledger refused for good is not tried again
            opened = tuple(o for o in opened if o.container.container_id not in self.unbilled)
        else:
            for opening in opened:
                self.running[opening.container.container_id] = opening.container
        # a reconcile may close a session before its die event is handled: the reason the
        # meter stopped the server still names it
        closed = [self._with_stop_reason(closing) for closing in changes.closed]
        if changes.killed is not None:
            container_id, signal = changes.killed
            self.kills[container_id] = signal
        if changes.died is not None:
            container_id, at, code = changes.died
            closed.append(Closing(container_id, at, self._death_reason(container_id, code)))
        if changes.removed is not None:
            container_id, at = changes.removed
            if container_id in self.running:
                closed.append(Closing(container_id, at, "container removed"))
        for closing in closed:
            self._forget(closing.container_id)
        touched = None
        if changes.running and changes.seen_at is not None:
            touched = (tuple(self.running), changes.seen_at)
        return LedgerWrites(
            tuple(opened),
            tuple(closed),
            touched,
            changes.events_since_ns,
            tuple(new),
            changes.reopened,
            changes.ended_earlier,
            changes.forgotten,
        )

    def follow(self, running) -> None:
        """Cluster mode: the running containers are the ledger's open sessions (each
        :class:`~jupyter_gpu_meter.sessions.ManagedContainer`), replaced whole; what
        was kept of a container no longer running is dropped."""
        self.running = {container.container_id: container for container in running}
        for kept in (self.kills, self.stop_reasons, self.unbilled):
            for container_id in set(kept) - self.running.keys():
                del kept[container_id]

    def _with_stop_reason(self, closing: Closing) -> Closing:
        reason = self.stop_reasons.get(closing.container_id)
        if reason is None:
            return closing
        return Closing(closing.container_id, closing.ended_at, f"{REASON_STOPPED}: {reason}")

    def _death_reason(self, container_id: str, code) -> str:
        signal = self.kills.get(container_id)
        if container_id in self.stop_reasons:
            return f"{REASON_STOPPED}: {self.stop_reasons[container_id]}"
        if signal == 9:
            return REASON_KILLED
        if signal:
            return REASON_STOPPED
        return reason_exited(code)

    def _forget(self, container_id: str) -> None:
        self.running.pop(container_id, None)
        self.kills.pop(container_id, None)
        self.stop_reasons.pop(container_id, None)
        self.unbilled.pop(container_id, None)

    def gpu_owners(self) -> dict[str, str]:
        """GPU UUID -> container id of the running session that owns it."""
        return {
            uuid: container.container_id
            for container in self.running.values()
            for uuid in container.gpu_uuids
        }

    # --- failures --------------------------------------------------------------

    def open_failed(self, opening: Opening, error: BaseException, at: datetime) -> bool:
        """The ledger refused `opening` for good. True if its server still runs (to stop)."""
        self.session_open_failures += 1
        self.last_session_open_failure = error_summary(error)
        container_id = opening.container.container_id
        if container_id not in self.running:
            return False
        self.unbilled[container_id] = OpenFailure(opening.container, error_class(error), at)
        return True

    def policies_checked(self, began: datetime) -> None:
        """A policy check that began at `began` is done (its failures counted apart)."""
        self.policies_checked_at = began

    def policy_failed(self, error: BaseException) -> None:
        """Count one failed policy step (logged by the caller)."""
        self.policy_errors += 1
        self.last_policy_error = error_summary(error)

    # --- the sampler -----------------------------------------------------------

    def sampled(self, tick) -> None:
        self.last_tick = tick

    def isolation_checked(self, breaches: tuple, new: int) -> None:
        """The isolation check of a tick found `breaches`, `new` of them not there before."""
        self.breaches = breaches
        self.breaches_total += new

    # --- readers ---------------------------------------------------------------

    def view(self) -> MeterView:
        """A frozen snapshot for the web layer."""
        return MeterView(
            running=MappingProxyType(dict(self.running)),
            last_tick=self.last_tick,
            unbilled=MappingProxyType(dict(self.unbilled)),
            session_open_failures=self.session_open_failures,
            last_session_open_failure=self.last_session_open_failure,
            policy_errors=self.policy_errors,
            last_policy_error=self.last_policy_error,
            breaches=self.breaches,
            breaches_total=self.breaches_total,
        )

    def health(self) -> dict:
        """The fields of ``api/health`` that come from this state."""
        return {
            "running_sessions": len(self.running),
            "unbilled_servers": len(self.unbilled),
            "session_open_failures": self.session_open_failures,
            "last_session_open_failure": self.last_session_open_failure,
            "policy_errors": self.policy_errors,
            "last_policy_error": self.last_policy_error,
            "last_policy_check": isoformat(self.policies_checked_at),
        }


#: a function that gives the meter's health dict (``MeterService.health``)
HealthSource = Callable[[], dict]
