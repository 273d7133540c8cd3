"""What a sample of the GPUs finds: one reading per GPU and per GPU process, in a tick."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

#: where a GPU process runs: in a Docker container (its id is known) ...
WHERE_CONTAINER = "container"
#: ... on the host, in no container (its /proc entry was read) ...
WHERE_HOST = "host"
#: ... or nobody can say: it ended, or it lives in another PID namespace
WHERE_UNKNOWN = "unknown"


class GPUReading(NamedTuple):
    """One GPU at one tick. Fields NVML cannot give are None (or 0 for memory)."""

    uuid: str
    index: int
    model: str
    #: percent of the time a kernel ran over the driver's last sample period
    utilization: int | None
    memory_used_bytes: int
    memory_total_bytes: int
    power_watts: float | None = None
    temperature_c: int | None = None
    healthy: bool = True
    #: why the GPU could not be read, empty when healthy
    problem: str = ""
    #: the GPU's total-energy counter, millijoules since the driver loaded
    #: (``nvmlDeviceGetTotalEnergyConsumption``); None when the GPU cannot say
    energy_mj: int | None = None
    #: GPM SM activity (%) over the last tick (Hopper and later); None without GPM
    sm_activity: float | None = None


class ProcessReading(NamedTuple):
    """One compute process on one GPU at one tick (a named tuple: a tick makes hundreds)."""

    gpu_uuid: str
    #: host PID, as the driver reports it
    pid: int
    #: the Docker container (64 hex digits) the process runs in, None if none
    container_id: str | None
    used_memory_bytes: int | None
    #: mean SM utilization (%) of the process's samples since the previous tick; None if none
    sm_utilization: int | None
    #: WHERE_CONTAINER, WHERE_HOST or WHERE_UNKNOWN
    where: str = WHERE_UNKNOWN
    #: the process's name (``/proc/<pid>/comm``, e.g. "python"), "" when unknown
    name: str = ""


@dataclass(frozen=True)
class Tick:
    """Everything one sample of all GPUs found."""

    #: when the sample started, timezone-aware UTC
    at: datetime
    gpus: tuple[GPUReading, ...]
    processes: tuple[ProcessReading, ...]
    #: how long the sample took, in seconds
    duration_s: float


class SamplerUnavailable(RuntimeError):
    """This machine gives no GPU readings: the meter falls back to runtime-only metering."""
