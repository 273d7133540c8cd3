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
"""

from __future__ import annotations

import functools

from traitlets import Bool, Float, HasTraits

from ..gpus import GPU, Inventory
from ..ledger import LOST_AFTER_HEARTBEATS
from ..sessions import ManagedContainer
from .loops import every


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
            GPU(gpu.uuid, gpu.index, gpu.model, gpu.memory_total_bytes)
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
