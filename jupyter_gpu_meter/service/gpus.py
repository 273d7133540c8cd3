"""The GPUs now, as ``api/gpus`` and the admin page show them.

:func:`gpu_rows` is pure: the last sample (or the inventory) and the running
containers in, one dict a GPU out, with its readings and the words the page
shows of them (``*_text``), so the page's script formats nothing.
"""

from __future__ import annotations

from datetime import timedelta

from .. import isolation, usage
from ..usage import format_percent, format_quantity
from .cluster_views import cluster_now, cluster_readings, node_rows, totals

#: how far back the admin page's isolation box lists decisions
ISOLATION_DECISIONS_DAYS = 7


async def gpu_list(context, viewer) -> list[dict]:
    """The GPUs as ``api/gpus`` gives them to `viewer` (inventory read off the loop; in
    cluster mode, the nodes' GPUs from the ledger: :mod:`.cluster_views`)."""
    if context.cluster:
        return cluster_gpu_rows(await cluster_now(context), viewer)
    live = context.live
    tick = live.tick()
    inventory = None if tick is not None else await context.reader.call(live.inventory)
    view = live.view()
    return gpu_rows(
        tick,
        inventory,
        view.running,
        viewer=viewer.name,
        sees_everyone=viewer.sees_everyone,
        breaches=view.breaches,
    )


def cluster_gpu_rows(read, viewer) -> list[dict]:
    """Every node's GPUs as ``api/gpus`` gives them to `viewer`; holders from the open
    sessions (a :class:`~jupyter_gpu_meter.ledger.node_views.ClusterRead`). Pure."""
    running = {session.container_id: session for session in read.sessions}
    return rows_of(
        cluster_readings(read), running, viewer=viewer.name, sees_everyone=viewer.sees_everyone
    )


async def gpus_and_nodes(context, viewer) -> tuple[list[dict], dict | None]:
    """The admin page's GPUs and, in cluster mode, instead of them (the page's script loads
    a cluster's GPUs from ``api/gpus``) its "GPUs per node" box: the nodes and their
    totals, ``api/nodes``' fields; None on one host."""
    if not context.cluster:
        return await gpu_list(context, viewer), None
    rows = node_rows(await cluster_now(context), now=context.reader.clock())
    return [], {"nodes": rows, "totals": totals(rows)}


def format_gib(size: int | None) -> str:
    """GPU memory for people: ``10.0 GiB`` (2**30 bytes); "–" when unknown."""
    return "–" if size is None else f"{format_quantity(size / 2**30, 1)} GiB"


def _texts(row: dict) -> dict:
    power = row["power_watts"]
    return {
        "utilization_text": format_percent(row["utilization"]),
        "memory_text": f"{format_gib(row['memory_used_bytes'])} / "
        f"{format_gib(row['memory_total_bytes'])}",
        "power_text": "–" if power is None else f"{format_quantity(power, 0)} W",
    }


def breach_rows(breaches, running, *, details: bool) -> dict[str, list[dict]]:
    """GPU UUID -> its current isolation breaches, as ``api/gpus`` gives them. Pure.

    `breaches`: (:class:`~jupyter_gpu_meter.isolation.Breach`, first seen) pairs.
    With `details` (a viewer who sees everyone): the process's PID, name, where
    it runs, its container and its server's user and server name (None when it
    runs in no server). Without: every field None but ``since``: that a foreign
    process uses the GPU, and since when.
    """
    rows: dict[str, list[dict]] = {}
    for breach, since in breaches:
        row = dict.fromkeys(
            ("pid", "process_name", "where", "container_id", "user", "server"), None
        )
        if details:
            own = running.get(breach.container_id) if breach.container_id else None
            row.update(
                pid=breach.pid,
                process_name=breach.process_name,
                where=breach.where,
                container_id=breach.container_id,
                user=own.user if own is not None else None,
                server=own.server if own is not None else None,
            )
        row["since"] = usage.isoformat(since)
        rows.setdefault(breach.gpu_uuid, []).append(row)
    return rows


def gpu_rows(
    tick, inventory, running: dict, *, viewer: str, sees_everyone: bool, breaches=()
) -> list[dict]:
    """Each GPU now: model, memory, utilization, power, health, who holds it, breaches. Pure.

    From the last sample (`tick`) when there is one, else from `inventory`
    (GPU sampling off: no readings). `running` maps container ids to the
    running containers; `breaches` are the meter's current isolation breaches
    (see :func:`breach_rows`). One host: every GPU's ``node`` is "". See
    :func:`rows_of` for what a viewer sees.
    """
    if tick is not None:
        sampled_at = usage.isoformat(tick.at)
        readings = [
            {
                "uuid": gpu.uuid,
                "index": gpu.index,
                "model": gpu.model,
                "utilization": gpu.utilization,
                "memory_used_bytes": gpu.memory_used_bytes,
                "memory_total_bytes": gpu.memory_total_bytes,
                "power_watts": gpu.power_watts,
                "temperature_c": gpu.temperature_c,
                "healthy": gpu.healthy,
                "problem": gpu.problem,
                "sampled_at": sampled_at,
            }
            for gpu in tick.gpus
        ]
    else:
        readings = [
            {
                "uuid": gpu.uuid,
                "index": gpu.index,
                "model": gpu.model,
                "utilization": None,
                "memory_used_bytes": None,
                "memory_total_bytes": gpu.memory_total_bytes,
                "power_watts": None,
                "temperature_c": None,
                "healthy": gpu.healthy,
                "problem": gpu.problem,
                "sampled_at": None,
            }
            for gpu in (inventory.gpus if inventory is not None else ())
        ]
    return rows_of(
        [{**reading, "node": ""} for reading in readings],
        running,
        viewer=viewer,
        sees_everyone=sees_everyone,
        breaches=breaches,
    )


def rows_of(
    readings: list[dict], running: dict, *, viewer: str, sees_everyone: bool, breaches=()
) -> list[dict]:
    """``api/gpus``' rows from each GPU's `readings` (a dict of its fields, its node and
    ``sampled_at`` included) and who holds it (`running`: container id -> a running
    container or open session, with ``gpu_uuids``, ``user``, ``server``,
    ``started_at``). Pure.

    A viewer who does not see everyone sees the readings and the holder of
    their own GPUs only, and of the processes that should not be on them only
    how many there are; of the others' GPUs, whether they are allocated.
    """
    by_gpu = breach_rows(breaches, running, details=sees_everyone)
    holders = {
        uuid: container
        for container in running.values()
        for uuid in getattr(container, "gpu_uuids", ())
    }
    rows = []
    for reading in readings:
        holder = holders.get(reading["uuid"])
        mine = holder is not None and holder.user == viewer
        row = {**reading, "allocated": holder is not None}
        if holder is not None and (sees_everyone or mine):
            row["holder"] = {
                "user": holder.user,
                "server": holder.server,
                "since": usage.isoformat(holder.started_at),
            }
        else:
            row["holder"] = None
        if holder is not None and not (sees_everyone or mine):
            # another user's GPU: its readings are their usage
            for key in ("utilization", "memory_used_bytes", "power_watts", "temperature_c"):
                row[key] = None
        # foreign processes: every one for those who see everyone, on one's own GPUs for users
        row["breaches"] = by_gpu.get(reading["uuid"], []) if sees_everyone or mine else []
        rows.append({**row, **_texts(row)})
    return rows


def _server_text(container) -> str:
    if container is None:
        return ""
    return f"{container.user}/{container.server}" if container.server else container.user


def isolation_rows(breaches, running, tick) -> list[dict]:
    """The current breaches as the admin page lists them: GPU, its holder, the process and
    the process's server, in words. Pure."""
    index = {gpu.uuid: gpu.index for gpu in tick.gpus} if tick is not None else {}
    rows = []
    for breach, since in breaches:
        own = running.get(breach.container_id) if breach.container_id else None
        if breach.where == isolation.WHERE_UNMANAGED:
            place = f"unmetered container {breach.container_id[:12]}"
        elif breach.where == isolation.WHERE_CONTAINER:
            place = "server " + _server_text(own) if own is not None else "a server"
        else:
            place = breach.where
        rows.append(
            {
                "gpu_uuid": breach.gpu_uuid,
                "gpu_index": index.get(breach.gpu_uuid),
                "holder": _server_text(running.get(breach.gpu_owner)) if breach.gpu_owner else "",
                "pid": breach.pid,
                "process_name": breach.process_name,
                "where": breach.where,
                "place": place,
                "since": since,
            }
        )
    return rows


async def isolation_section(context) -> dict:
    """The admin page's "Isolation breaches" box: the breaches now, and the decisions
    of the policy ``isolation`` of the last days (the ledger read off the loop)."""
    view = context.live.view()
    reader = context.reader
    since = reader.clock() - timedelta(days=ISOLATION_DECISIONS_DAYS)
    decisions = await reader.call(
        reader.ledger.decisions, policy=isolation.POLICY, since=since, limit=10
    )
    return {
        "breaches": isolation_rows(view.breaches, view.running, view.last_tick),
        "decisions": decisions,
        "days": ISOLATION_DECISIONS_DAYS,
    }
