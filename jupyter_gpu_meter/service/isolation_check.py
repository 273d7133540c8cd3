"""The isolation check each tick: breaches found, logged, recorded, counted, their servers stopped.

Every sampler tick, :func:`~jupyter_gpu_meter.isolation.find_breaches` looks at
each GPU process against the running servers' GPUs. A breach is *new* when its
(PID, GPU) was not a breach at the tick before; each new one is logged once
(a warning), and recorded as a decision of the policy ``isolation``: one
decision per server and tick, about the server the process runs in, or, for a
process in no server, about the server whose GPU it uses. With
``c.Policies.stop_on_isolation_breach`` the process's own server is stopped
through the policies' stop path (reason ``isolation breach: ...``; a dry run
only decides), never the server whose GPU it is.

A process the meter cannot place (``where == "unknown"``: its ``/proc`` entry is
gone) counts once it is on two ticks in a row: a process that ended leaves its
last utilization samples for one tick, and is no breach.

The current breaches (with when each was first seen) and the count of new ones
live in the meter's state (:meth:`~jupyter_gpu_meter.service.state.MeterState.isolation_checked`),
for ``api/gpus``, the admin page and /metrics. Runs on the event loop; the
new breaches of a tick are acted on in a task of their own, so a slow ledger
or hub never holds up the sampler.
"""

from __future__ import annotations

import asyncio

from ..isolation import POLICY as ISOLATION_POLICY
from ..isolation import WHERE_CONTAINER, WHERE_HOST, WHERE_UNKNOWN, Breach, find_breaches
from ..policies import STOP, Decision

#: the action of a decision that stops nothing
REPORT = "report"


def server_words(container) -> str:
    """``ada's server`` (the default one) or ``ada's server "x"``."""
    if container is None:
        return "no server"
    named = f' "{container.server}"' if container.server else ""
    return f"{container.user}'s server{named}"


def breach_words(breach: Breach, running) -> str:
    """One breach for a log line or a decision's reason: whose process, which GPU, whose GPU."""
    name = breach.process_name or "name unknown"
    if breach.where == WHERE_CONTAINER:
        place = "in " + server_words(running.get(breach.container_id))
    elif breach.where == WHERE_HOST:
        place = "on the host"
    elif breach.where == WHERE_UNKNOWN:
        place = "in an unknown place"
    else:
        place = f"in the unmetered container {(breach.container_id or '')[:12]}"
    holder = running.get(breach.gpu_owner) if breach.gpu_owner else None
    held = f"held by {server_words(holder)}" if holder is not None else "which no server holds"
    return f"PID {breach.pid} ({name}) {place} uses GPU {breach.gpu_uuid}, {held}"


class IsolationCheck:
    """Finds the breaches of each tick and acts on the new ones (see the module).

    `runner` is the :class:`~jupyter_gpu_meter.service.policy_runner.PolicyRunner`:
    its settings, the meter's state, its decision record and its stop path.
    """

    def __init__(self, runner):
        self.runner = runner
        #: (PID, GPU) of the breaches of "unknown" processes at the last tick
        self._unknown_before: set[tuple[int, str]] = set()
        #: container ids of servers whose stop for a breach failed, tried again
        self.unstopped: set[str] = set()
        #: the tasks acting on new breaches (kept until done)
        self._acting: set[asyncio.Task] = set()

    @property
    def state(self):
        return self.runner.state

    async def check(self, tick) -> list[Breach]:
        """Check one tick; returns the new breaches, acted on in a task of their own (a
        slow ledger or hub never holds up the sampler): :meth:`settled` waits for it."""
        running = self.state.running
        allowed = {cid: frozenset(c.gpu_uuids) for cid, c in running.items()}
        found = find_breaches(tick.processes, self.state.gpu_owners(), allowed)
        unknown = {b.key for b in found if b.where == WHERE_UNKNOWN}
        found = [b for b in found if b.where != WHERE_UNKNOWN or b.key in self._unknown_before]
        self._unknown_before = unknown
        since = {breach.key: at for breach, at in self.state.breaches}
        new = [b for b in found if b.key not in since]
        self.state.isolation_checked(tuple((b, since.get(b.key, tick.at)) for b in found), len(new))
        if new:
            task = asyncio.ensure_future(self._act(new, dict(running)))
            self._acting.add(task)
            task.add_done_callback(self._acting.discard)
        return new

    async def settled(self) -> None:
        """Wait until the new breaches found so far are logged, recorded and acted on."""
        await asyncio.gather(*self._acting)

    async def _act(self, new: list[Breach], running: dict) -> None:
        """Log each new breach; decide on each server concerned (`running`: the running
        servers when the breaches were found)."""
        by_server: dict[str, list[Breach]] = {}
        for breach in new:
            self.runner.log.warning(
                "Isolation breach: %s (process container %s)",
                breach_words(breach, running),
                (breach.container_id or "none")[:12],
            )
            own = breach.where == WHERE_CONTAINER
            subject = breach.container_id if own else breach.gpu_owner
            by_server.setdefault(subject, []).append(breach)
        for container_id, breaches in by_server.items():
            container = running.get(container_id)
            if container is None:  # (not possible: breaches and `running` are of one tick)
                continue
            try:
                await self._decide(container, breaches, running)
            except Exception as e:
                self.runner.failed(f"the isolation decision on {server_words(container)}", e)

    async def _decide(self, container, breaches: list[Breach], running: dict) -> None:
        reason = "isolation breach: " + "; ".join(breach_words(b, running) for b in breaches)
        server = self.runner.server_state(container)
        own = breaches[0].where == WHERE_CONTAINER
        stop = self.runner.config.stop_on_isolation_breach
        if own and stop and container.container_id not in self.state.stop_reasons:
            await self._stop(server, Decision(ISOLATION_POLICY, STOP, reason))
            return
        if not stop:
            outcome = "reported"
        elif own:
            outcome = "reported; its server is already being stopped"
        else:
            outcome = (
                "reported; nothing stopped: the process runs in no server of this hub "
                "(the server whose GPU it uses is never stopped for it)"
            )
        await self.runner.record(
            server=server, decision=Decision(ISOLATION_POLICY, REPORT, reason), outcome=outcome
        )

    async def _stop(self, server, decision: Decision) -> None:
        await self.runner.stop(server, decision)
        dry_run = self.runner.config.dry_run
        if dry_run or server.container_id in self.state.stop_reasons:
            self.unstopped.discard(server.container_id)
        else:  # the hub did not stop it: try again at the next policy check
            self.unstopped.add(server.container_id)

    async def retry_stops(self) -> None:
        """Stop again each server whose stop for a breach failed, while the breach lasts."""
        offenders = {
            breach.container_id
            for breach, _ in self.state.breaches
            if breach.where == WHERE_CONTAINER
        }
        for container_id in list(self.unstopped):
            container = self.state.running.get(container_id)
            if container is None or container_id not in offenders:
                self.unstopped.discard(container_id)
                continue
            if container_id in self.state.stop_reasons:
                continue
            breaches = [b for b, _ in self.state.breaches if b.container_id == container_id]
            reason = "isolation breach: " + "; ".join(
                breach_words(b, self.state.running) for b in breaches
            )
            try:
                await self._stop(
                    self.runner.server_state(container), Decision(ISOLATION_POLICY, STOP, reason)
                )
            except Exception as e:
                self.runner.failed(f"stopping {server_words(container)} for a breach", e)
