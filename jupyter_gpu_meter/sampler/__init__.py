"""GPU sampling for the meter service: one reading per GPU and per GPU process, each tick.

Two samplers with one interface (``open()``, ``sample() -> Tick``, ``close()``),
both blocking, so the service calls them through :func:`sample_in_executor`:

- :class:`NVMLSampler` (:mod:`.nvml`) reads the NVIDIA driver through
  nvidia-ml-py, per GPU and per compute process, with each GPU's energy
  counter and, on Hopper and later, its GPM SM activity (:mod:`.gpm`); the
  driver's host PIDs map to a Docker container, the host or "unknown", and a
  process name, in :mod:`.attribution`.
- :class:`SimulatedSampler` (:mod:`.simulated`) reads simulated GPUs'
  utilization (and power) from a JSON file that a test or a demo writes, with
  a simulated energy counter.

:class:`GPUSampler` (:mod:`.settings`) holds the settings and picks the sampler;
:class:`RollupAggregator` (:mod:`.rollups`, pure) folds ticks into per-minute
rows for the ledger. What a tick holds is in :mod:`.readings`.
"""

from ..ledger.records import RollupRow
from .attribution import (
    Attribution,
    ContainerLookup,
    attribute_pid,
    container_from_cgroup,
    container_of_pid,
)
from .nvml import NVMLSampler
from .readings import (
    WHERE_CONTAINER,
    WHERE_HOST,
    WHERE_UNKNOWN,
    GPUReading,
    ProcessReading,
    SamplerUnavailable,
    Tick,
)
from .rollups import RollupAggregator, minute_of
from .settings import SIMULATED_UTILIZATION_ENV, GPUSampler, run_blocking, sample_in_executor
from .simulated import SimulatedSampler

__all__ = [
    "SIMULATED_UTILIZATION_ENV",
    "WHERE_CONTAINER",
    "WHERE_HOST",
    "WHERE_UNKNOWN",
    "Attribution",
    "ContainerLookup",
    "GPUReading",
    "GPUSampler",
    "NVMLSampler",
    "ProcessReading",
    "RollupAggregator",
    "RollupRow",
    "SamplerUnavailable",
    "SimulatedSampler",
    "Tick",
    "attribute_pid",
    "container_from_cgroup",
    "container_of_pid",
    "minute_of",
    "run_blocking",
    "sample_in_executor",
]
