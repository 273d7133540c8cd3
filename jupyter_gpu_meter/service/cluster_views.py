"""The cluster's GPUs and nodes, for ``api/gpus``, ``api/nodes``, /metrics and the admin page.

In cluster mode (``c.MeterService.cluster``) the hub's meter samples no GPU and
watches no Docker engine: the agents on the nodes write their GPUs (the
``nodes`` table), the sessions (tagged with their node) and per-minute rollups
into the ledger, and this module reads them back
(:func:`~jupyter_gpu_meter.ledger.node_views.read_cluster`, one snapshot):

- the GPUs are the union of the nodes' inventories;
- who holds a GPU comes from the open sessions;
- its utilization and memory from the latest minute of its rollups (the
  sample-weighted mean of that minute, and the minute's peak memory), so it
  lags the GPU by up to a minute; power and temperature are not in the
  ledger and stay unknown;
- a node the hub declared lost (``lost_at``) shows its GPUs unhealthy and
  offers none; one whose heartbeat is late but not yet swept is ``late``.

The functions that turn a read into rows are pure.
"""

from __future__ import annotations

from datetime import datetime

from .. import usage
from ..ledger import NODE_LOST
from ..ledger.node_views import ClusterRead, read_cluster
from ..usage import format_percent


async def cluster_now(context) -> ClusterRead:
    """The ledger's cluster now (read off the loop, in the reader's threads)."""
    reader = context.reader
    return await reader.call(read_cluster, reader.ledger.db)


def cluster_readings(read: ClusterRead) -> list[dict]:
    """Each GPU of every node, as :func:`~jupyter_gpu_meter.service.gpus.rows_of` takes
    them: by node name, then index. Pure."""
    readings = []
    for node in read.nodes:
        lost = node.lost_at is not None
        since = usage.format_time(node.last_heartbeat_at)
        for gpu in sorted(node.gpus, key=lambda g: (g.index, g.uuid)):
            latest = read.latest.get(gpu.uuid)
            utilization = None
            if latest is not None and latest.utilization is not None:
                utilization = round(latest.utilization)
            readings.append(
                {
                    "uuid": gpu.uuid,
                    "index": gpu.index,
                    "model": gpu.model,
                    "utilization": utilization,
                    "memory_used_bytes": latest.memory_max_bytes if latest else None,
                    "memory_total_bytes": gpu.memory_total_bytes,
                    "power_watts": None,
                    "temperature_c": None,
                    "healthy": not lost and not gpu.problem,
                    "problem": f"{NODE_LOST}: no heartbeat since {since}" if lost else gpu.problem,
                    "sampled_at": usage.isoformat(latest.minute) if latest else None,
                    "node": node.name,
                }
            )
    return readings


def node_rows(read: ClusterRead, *, now: datetime) -> list[dict]:
    """One row a node: its heartbeat, lost or late, its GPUs total / free / held, who holds
    them and their mean utilization, with the words the page shows. Pure.

    Straight from the read, not from ``api/gpus``' rows: the admin page shows
    these, not 800 GPUs. A lost node's GPUs are not free (nothing starts
    there): ``gpus_free`` counts the GPUs nobody holds on nodes that report.
    """
    sessions: dict[str, list] = {}
    for session in read.sessions:
        sessions.setdefault(session.node, []).append(session)
    held_uuids = {uuid for session in read.sessions for uuid in session.gpu_uuids}
    rows = []
    for node in read.nodes:
        lost = node.lost_at is not None
        held = [gpu.uuid for gpu in node.gpus if gpu.uuid in held_uuids]
        latest = [read.latest.get(uuid) for uuid in held]
        measured = [m.utilization for m in latest if m is not None and m.utilization is not None]
        utilization = sum(measured) / len(measured) if measured else None
        holders = [
            {
                "user": s.user,
                "server": s.server,
                "gpus": s.gpu_count,
                "since": usage.isoformat(s.started_at),
            }
            for s in sessions.get(node.name, [])
        ]
        rows.append(
            {
                "name": node.name,
                "models": sorted({gpu.model for gpu in node.gpus}),
                "agent_version": node.agent_version,
                "agent_started_at": usage.isoformat(node.agent_started_at),
                "last_heartbeat_at": usage.isoformat(node.last_heartbeat_at),
                "last_heartbeat_text": usage.format_time(node.last_heartbeat_at),
                "heartbeat_interval_s": node.heartbeat_interval_s,
                "lost": lost,
                "lost_at": usage.isoformat(node.lost_at),
                "late": node.late(now),
                "gpus_total": len(node.gpus),
                "gpus_held": len(held),
                "gpus_free": 0 if lost else len(node.gpus) - len(held),
                "sessions": holders,
                "utilization": None if utilization is None else round(utilization, 1),
                "utilization_text": format_percent(utilization),
            }
        )
    return rows


def totals(rows: list[dict]) -> dict:
    """The nodes' rows added up: nodes, lost, GPUs total / free / held. Pure."""
    return {
        "nodes": len(rows),
        "lost": sum(1 for row in rows if row["lost"]),
        **{key: sum(row[key] for row in rows) for key in ("gpus_total", "gpus_free", "gpus_held")},
    }
