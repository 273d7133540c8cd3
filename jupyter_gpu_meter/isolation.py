"""The isolation check: which GPU processes run where they should not. Pure.

Each metered server owns whole GPUs (its container's device requests). Every
tick the sampler lists each GPU's compute processes with the host PID and, read
from ``/proc``, the container each runs in. A process breaks isolation when

- it runs in a metered server's container, on a GPU that server does not own
  (a CPU-only server has none: any GPU is a breach), or
- it runs outside every metered server (on the host, in a container the meter
  does not meter, or nobody can say where) on a GPU that a server owns.

A process on its own server's GPU, and a process outside any server on a GPU no
server holds, are never breaches. Acting on breaches (log, decision, stop) is
the service's: :mod:`jupyter_gpu_meter.service.isolation_check`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: the policy name of the decisions about breaches
POLICY = "isolation"

#: where a breaching process runs: in a metered server's container ...
WHERE_CONTAINER = "container"
#: ... in a Docker container the meter does not meter (another hub's, a hand-started one) ...
WHERE_UNMANAGED = "unmanaged"
#: ... on the host, in no container ...
WHERE_HOST = "host"
#: ... or nobody can say (its /proc entry could not be read)
WHERE_UNKNOWN = "unknown"


@dataclass(frozen=True)
class Breach:
    """One process on one GPU it has no business on."""

    gpu_uuid: str
    #: host PID, as the driver reports it
    pid: int
    #: the process's name (``/proc/<pid>/comm``), "" when unknown
    process_name: str
    #: where the process runs: "container" (a metered server's), "unmanaged" (a Docker
    #: container the meter does not meter), "host", "unknown"
    where: str
    #: the process's own container id (64 hex) or None
    container_id: str | None
    #: the container id of the metered server holding this GPU, None if no server holds it
    gpu_owner: str | None

    @property
    def key(self) -> tuple[int, str]:
        """(PID, GPU): what makes a breach the same one from one tick to the next."""
        return (self.pid, self.gpu_uuid)


def _where_outside(process) -> str:
    """Where a process that is in no metered container runs."""
    if process.container_id:
        return WHERE_UNMANAGED
    where = getattr(process, "where", WHERE_UNKNOWN)
    return WHERE_HOST if where == WHERE_HOST else WHERE_UNKNOWN


def find_breaches(
    processes: Iterable,
    owners: Mapping[str, str],
    allowed: Mapping[str, frozenset[str]],
) -> list[Breach]:
    """The isolation breaches among one tick's `processes`, by GPU then PID. Pure.

    `processes`: :class:`~jupyter_gpu_meter.sampler.ProcessReading` (``gpu_uuid``,
    ``pid``, ``container_id``, and where known ``where`` and ``name``); `owners`:
    GPU UUID -> the container id of the metered server holding it; `allowed`:
    every running metered container's id -> the GPU UUIDs it owns (an empty set
    for a CPU-only server). A (PID, GPU) pair listed twice counts once.
    """
    found: dict[tuple[int, str], Breach] = {}
    for process in processes:
        gpu, container = process.gpu_uuid, process.container_id
        if container in allowed:
            if gpu in allowed[container]:
                continue  # its own GPU
            where = WHERE_CONTAINER
        elif gpu in owners:
            where = _where_outside(process)
        else:
            continue  # outside every server, on a GPU no server holds
        breach = Breach(
            gpu_uuid=gpu,
            pid=process.pid,
            process_name=getattr(process, "name", "") or "",
            where=where,
            container_id=container or None,
            gpu_owner=owners.get(gpu),
        )
        found.setdefault(breach.key, breach)
    return sorted(found.values(), key=lambda b: (b.gpu_uuid, b.pid))
