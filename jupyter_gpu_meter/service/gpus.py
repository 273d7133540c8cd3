"""The GPUs now, as ``api/gpus`` and the admin page show them.

:func:`gpu_rows` is pure: the last sample (or the inventory) and the running
containers in, one dict a GPU out, with its readings and the words the page
shows of them (``*_text``), so the page's script formats nothing.
"""

from __future__ import annotations

from .. import usage
from ..usage import format_percent, format_quantity


async def gpu_list(context, viewer) -> list[dict]:
    """The GPUs as ``api/gpus`` gives them to `viewer` (inventory read off the loop)."""
    live = context.live
    tick = live.tick()
    inventory = None if tick is not None else await context.reader.call(live.inventory)
    return gpu_rows(
        tick,
        inventory,
        live.running(),
        viewer=viewer.name,
        sees_everyone=viewer.sees_everyone,
    )


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


def gpu_rows(tick, inventory, running: dict, *, viewer: str, sees_everyone: bool) -> list[dict]:
    """Each GPU now: model, memory, utilization, power, health and who holds it. Pure.

    From the last sample (`tick`) when there is one, else from `inventory`
    (GPU sampling off: no readings). `running` maps container ids to the
    running containers. A viewer who does not see everyone sees the readings
    and the holder of their own GPUs only; of the others, whether they are
    allocated.
    """
    holders = {
        uuid: container
        for container in running.values()
        for uuid in getattr(container, "gpu_uuids", ())
    }
    if tick is not None:
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
            }
            for gpu in tick.gpus
        ]
        sampled_at = usage.isoformat(tick.at)
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
            }
            for gpu in (inventory.gpus if inventory is not None else ())
        ]
        sampled_at = None
    rows = []
    for reading in readings:
        holder = holders.get(reading["uuid"])
        mine = holder is not None and holder.user == viewer
        row = {**reading, "sampled_at": sampled_at, "allocated": holder is not None}
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
        rows.append({**row, **_texts(row)})
    return rows
