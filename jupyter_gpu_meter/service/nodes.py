"""The hub's meter in cluster mode: the nodes' agents meter, this meter reads the ledger.

With ``c.MeterService.cluster = True`` the GPU servers are the nodes of a
Docker Swarm, each metered by its own ``jupyter-gpu-meter agent``
(:mod:`~jupyter_gpu_meter.service.agent`) into the shared ledger. The hub's
meter watches no Docker engine and samples no GPU. Every
``node_sweep_interval`` it (:func:`follow_the_ledger`):

- sweeps the nodes: a node whose last heartbeat is older than 2 of its
  agent's intervals is lost, and its open sessions end at that heartbeat
  with the reason "node lost" (:meth:`~jupyter_gpu_meter.ledger.Ledger.sweep_lost_nodes`);
- replaces the servers it knows running with the ledger's open sessions, of
  every node: what pages, API, metrics and policies read
  (:meth:`~jupyter_gpu_meter.service.state.MeterState.follow`).

The GPUs it lists are the nodes' (:class:`LedgerInventory`), from their
agents' heartbeats.

Its policies read the GPUs' activity from the agents' per-minute rollups
(:func:`follow_activity`, before each policy check), so GPU idleness and
keep-alive have minute resolution here: :func:`check_policy_settings` refuses
a ``gpu_idle_timeout`` or ``keep_alive_window`` under
:data:`MIN_POLICY_SECONDS`. Before it asks the hub to stop a server it writes
the reason into the ledger (:func:`write_stop_reason`), where the agent's
close of the session finds it.
"""

from __future__ import annotations

import functools
from datetime import timedelta

from traitlets import Bool, Float, HasTraits

from ..gpus import GPU, Inventory
from ..ledger import LOST_AFTER_HEARTBEATS
from ..policies import MINUTE, activity_from_minutes
from ..sessions import ManagedContainer
from .loops import every
from .state import error_class

#: cluster mode: the shortest ``gpu_idle_timeout`` (but 0, off) and ``keep_alive_window``
#: (while ``keep_alive`` is on), seconds: GPU activity comes in minutes, each known up to
#: a minute late, so a shorter setting would mostly measure that resolution
MIN_POLICY_SECONDS = 120


class ClusterConfigError(ValueError):
    """The hub's meter cannot run in cluster mode with these settings; the message says
    what is allowed."""


class ClusterSettings(HasTraits):
    """The meter's cluster settings (``c.MeterService.cluster``, ...), mixed into
    :class:`~jupyter_gpu_meter.service.app.MeterService`."""

    cluster = Bool(
        False,
        help="""
        True: the hub's GPU servers are the nodes of a cluster (Docker Swarm),
        each metered by its own ``jupyter-gpu-meter agent`` into this shared
        ledger (PostgreSQL). The hub's meter then watches no Docker engine and
        samples no GPU: it serves pages, API, metrics and policies over the
        ledger and ends the sessions of a node whose agent stopped reporting
        ("node lost", see ``node_sweep_interval``). False (the default): one
        host, metered here.
        """,
    ).tag(config=True)

    node_sweep_interval = Float(
        5.0,
        min=0.1,
        help="""
        Cluster mode: seconds between two looks at the nodes' heartbeats and
        the ledger's running sessions, e.g. 5. A node whose last heartbeat is
        older than 2 of its agent's ``heartbeat_interval`` is lost: its open
        sessions end at that heartbeat. A node is found lost at most this long
        after that, and pages see a server start or stop this long after its
        agent wrote it.
        """,
    ).tag(config=True)


class LedgerInventory:
    """The cluster's GPUs: those of every node not lost, as its agent last reported them.

    Stands in for :class:`~jupyter_gpu_meter.gpus.GPUInventory` as the meter's
    ``inventory_source`` (``discover()``, blocking: the ledger).
    """

    def __init__(self, ledger):
        self.ledger = ledger

    def discover(self) -> Inventory:
        gpus = tuple(
            GPU(
                gpu.uuid,
                gpu.index,
                gpu.model,
                gpu.memory_total_bytes,
                healthy=not gpu.problem,
                problem=gpu.problem,
            )
            for node in self.ledger.nodes()
            if not node.lost
            for gpu in node.gpus
        )
        return Inventory(gpus, source="cluster")


def sweep_loop(meter):
    """The hub's loop in cluster mode: :func:`follow_the_ledger` every ``node_sweep_interval``."""
    meter.log.info("Cluster mode: the nodes' agents meter; this meter reads the ledger")
    return every(
        meter.node_sweep_interval,
        functools.partial(follow_the_ledger, meter),
        "Node sweep",
        meter.log,
    )


async def follow_the_ledger(meter) -> None:
    """One node sweep, then the running servers from the ledger (cluster mode).

    The ledger work runs in the meter's ledger thread; the state is replaced
    here, on the event loop that owns it.
    """
    now = meter.clock()
    lost = await meter._in_ledger_thread(meter.ledger.sweep_lost_nodes, now)
    for node, container_ids in sorted(lost.items()):
        meter.log.warning(
            "Node %s lost (no heartbeat for %s heartbeat intervals): %d session(s) ended "
            "'node lost' at its last heartbeat",
            node,
            LOST_AFTER_HEARTBEATS,
            len(container_ids),
        )
    sessions = await meter._in_ledger_thread(meter.ledger.open_sessions)
    meter.state.follow([ManagedContainer.from_session(session) for session in sessions])


def check_policy_settings(policies) -> None:
    """Refuse (:class:`ClusterConfigError`) the policy settings cluster mode cannot keep:
    a ``gpu_idle_timeout`` (global or per profile) or ``keep_alive_window`` (while
    ``keep_alive`` is on) under :data:`MIN_POLICY_SECONDS`; a timeout of 0 (off) is fine."""
    short = []
    if 0 < policies.gpu_idle_timeout < MIN_POLICY_SECONDS:
        short.append(f"c.Policies.gpu_idle_timeout = {policies.gpu_idle_timeout}")
    for slug, settings in sorted(policies.per_profile.items()):
        timeout = settings.get("gpu_idle_timeout", MIN_POLICY_SECONDS)
        if 0 < timeout < MIN_POLICY_SECONDS:
            short.append(f"c.Policies.per_profile[{slug!r}]['gpu_idle_timeout'] = {timeout}")
    if policies.keep_alive and policies.keep_alive_window < MIN_POLICY_SECONDS:
        short.append(f"c.Policies.keep_alive_window = {policies.keep_alive_window}")
    if short:
        raise ClusterConfigError(
            "In cluster mode (c.MeterService.cluster = True) the meter knows GPU activity "
            "by the minute (the agents' rollups), so it refuses: "
            + "; ".join(short)
            + f". Give at least {MIN_POLICY_SECONDS} seconds (gpu_idle_timeout may be 0: "
            "off; keep_alive_window does not count with c.Policies.keep_alive = False)."
        )


def activity_window(policies) -> timedelta:
    """How far back the policies read GPU activity: the longest idle timeout or the
    keep-alive window, and a minute more (an idle run read whole is that long)."""
    timeouts = [policies.gpu_idle_timeout, policies.keep_alive_window]
    timeouts += [s.get("gpu_idle_timeout", 0) for s in policies.per_profile.values()]
    return timedelta(seconds=max(timeouts)) + MINUTE


async def follow_activity(meter) -> None:
    """Cluster mode: each running GPU server's (idle_since, busy_at) for the policies,
    from its agent's rollups (:func:`~jupyter_gpu_meter.policies.activity_from_minutes`).

    The ledger read runs in the meter's ledger thread; ``runner.activity`` is
    replaced here, on the event loop. When the ledger cannot be read, no server
    is idle (unknown) and the last busy times stay: a stop waits, a vouch lasts
    its window.
    """
    runner, now = meter.runner, meter.clock()
    await follow_gpu_health(meter)
    servers = [c for c in meter.state.running.values() if c.gpu_uuids and c.started_at]
    since = now - activity_window(meter.policies)
    ids = [c.container_id for c in servers]
    try:
        minutes = await meter._in_ledger_thread(meter.ledger.recent_minutes, ids, since)
    except Exception as e:
        runner.failed("reading the GPUs' activity from the ledger", e)
        runner.activity = {
            c.container_id: (None, runner.activity.get(c.container_id, (None, None))[1])
            for c in servers
        }
        return
    threshold = meter.policies.gpu_idle_threshold
    runner.activity = {
        c.container_id: activity_from_minutes(
            minutes[c.container_id],
            gpus=len(c.gpu_uuids),
            since=max(since, c.started_at),
            now=now,
            threshold=threshold,
        )
        for c in servers
    }


async def follow_gpu_health(meter) -> None:
    """Cluster mode: ``runner.unhealthy`` (GPU UUID -> problem, what the GPU-health policy
    reads) from the nodes' last heartbeats, each GPU as its agent's last sample found it.
    A lost node's GPUs are not listed: its sessions were ended "node lost". When the
    ledger cannot be read, the last known problems stay."""
    try:
        found = await meter._in_ledger_thread(meter.ledger.nodes)
    except Exception as e:
        meter.runner.failed("reading the GPUs' health from the ledger", e)
        return
    meter.runner.unhealthy = {
        gpu.uuid: gpu.problem for node in found if not node.lost for gpu in node.gpus if gpu.problem
    }


def write_stop_reason(meter):
    """The policy runner's ``stop_reason`` in cluster mode: writes why a server is being
    stopped into its session (``sessions.stop_reason``), where the node's agent, which
    sees the container die but not why, finds it when it ends the session."""

    async def write(container_id: str, reason: str | None) -> None:
        try:
            await meter._in_ledger_thread(meter.ledger.set_stop_reason, container_id, reason)
        except Exception as e:  # the stop goes on: its session then ends "stopped"
            meter.log.warning(
                "Could not write why container %s is being stopped (%s): its session will "
                "end without the reason",
                container_id[:12],
                error_class(e),
            )

    return write
