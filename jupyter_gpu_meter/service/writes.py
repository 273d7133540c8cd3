"""The meter's ledger writes, queued in a :class:`~jupyter_gpu_meter.ledger.WriteBuffer`.

The event loop queues them (:func:`queue_session_writes`, :func:`queue_rollups`,
:func:`queue_decision`); the ledger thread runs them in order through the
buffer, which keeps them while the database is unavailable. The functions queued here are what the
buffer calls in that thread.
"""

from __future__ import annotations

from ..sessions import EVENTS_SINCE_KEY, Opening
from .state import LedgerWrites


def open_session(ledger, opening: Opening):
    """The ledger write that opens a session (in the ledger thread, through the buffer)."""
    container = opening.container
    return ledger.open_session(
        container_id=container.container_id,
        user=container.user,
        server=container.server,
        gpu_uuids=list(container.gpu_uuids),
        gpu_model=container.gpu_model,
        profile=container.profile,
        price=opening.price,
        started_at=opening.started_at,
        image=container.image,
        node=container.node,
    )


def queue_session_writes(
    buffer, ledger, writes: LedgerWrites, events_key: str = EVENTS_SINCE_KEY
) -> None:
    """Queue, in order, the ledger writes one applied change of sessions needs
    (`events_key`: the meter state key of the last Docker event, one per node)."""
    for container_id in writes.reopened:  # before "seen running" moves them on
        buffer.add(ledger.reopen_lost_session, container_id)
    for closing in writes.ended_earlier:
        buffer.add(
            ledger.end_lost_session_earlier, closing.container_id, closing.ended_at, closing.reason
        )
    for opening in writes.opened:
        buffer.add(open_session, ledger, opening)
    for closing in writes.closed:
        buffer.add(
            ledger.close_session,
            closing.container_id,
            ended_at=closing.ended_at,
            reason=closing.reason,
        )
    if writes.forgotten:
        buffer.add(ledger.forget_stopped_containers, writes.forgotten)
    if writes.touched is not None:
        buffer.add(ledger.touch_sessions, *writes.touched)
    if writes.events_since_ns is not None:
        buffer.add(ledger.set_state, events_key, writes.events_since_ns)


def queue_decision(buffer, ledger, at, server, decision, outcome: str, dry_run: bool) -> None:
    """Queue the record of a policy's `decision` on `server` and what came of it."""
    where = {"user": server.user, "server": server.server, "container_id": server.container_id}
    what = {"policy": decision.policy, "action": decision.action, "reason": decision.reason}
    buffer.add(ledger.record_decision, at=at, **where, **what, dry_run=dry_run, outcome=outcome)


def refused_openings(rejected) -> list[tuple[Opening, BaseException]]:
    """The session openings among the buffer's writes refused for good, with their errors."""
    return [
        (write.args[1], error)
        for write, error in rejected
        if getattr(write, "func", None) is open_session
    ]


def write_rollups(ledger, log, rows) -> None:
    """Write per-minute utilization rows (in the ledger thread, through the buffer).

    A session is opened (queued) before its GPUs get an owner, so the ledger
    knows every row's session; a row it cannot place means that open failed.
    """
    unplaced = ledger.add_rollups(rows)
    if unplaced:
        log.error(
            "%d utilization row(s) for container(s) without a session were not recorded: %s",
            len(unplaced),
            sorted({row.container_id[:12] for row in unplaced}),
        )


def queue_rollups(buffer, ledger, log, aggregator, running) -> None:
    """Queue what the aggregator holds: its minutes' rollups (then forget the complete
    ones) and every session's process groups (then forget those of sessions no
    longer `running`, container id -> container: the rows queued now are final)."""
    rows = aggregator.rows()
    if rows:
        buffer.add(write_rollups, ledger, log, rows)
        aggregator.forget_before(rows[-1].minute)  # earlier minutes are complete
    groups = aggregator.process_rows()
    if groups:
        buffer.add(write_process_usage, ledger, log, groups)
        aggregator.forget_sessions({row.container_id for row in groups} - running.keys())


def write_process_usage(ledger, log, rows) -> None:
    """Write sessions' process groups (in the ledger thread, through the buffer), after
    the rollups of the same flush; a row it cannot place means its session's open failed."""
    unplaced = ledger.add_process_usage(rows)
    if unplaced:
        log.error(
            "%d process group row(s) for container(s) without a session were not recorded: %s",
            len(unplaced),
            sorted({row.container_id[:12] for row in unplaced}),
        )
