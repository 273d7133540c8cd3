"""``GPUSampler``: the meter's sampling settings, which sampler to use, and running it."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from datetime import datetime

from traitlets import Float, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from ..clock import utcnow
from ..gpus import GPUInventory
from .nvml import NVMLSampler
from .readings import Tick
from .simulated import SimulatedSampler

SIMULATED_UTILIZATION_ENV = "JUPYTER_GPU_METER_SIMULATED_UTILIZATION"


class GPUSampler(LoggingConfigurable):
    """How the meter service samples the GPUs."""

    interval = Float(
        1.0,
        help="""
        Seconds between two GPU samples, e.g. ``1.0`` (the default) or ``0.5``.

        More than 0, at most 60. Each sample collects every per-process
        utilization sample NVML took since the previous one, so a longer
        interval loses no process samples, only resolution of the GPU-wide
        utilization and memory readings.
        """,
    ).tag(config=True)

    @validate("interval")
    def _check_interval(self, proposal):
        value = proposal.value
        if not 0 < value <= 60:
            raise TraitError(
                f"GPUSampler.interval must be more than 0 and at most 60 seconds "
                f"(e.g. 1.0), not {value!r}"
            )
        return value

    simulated_utilization_file = Unicode(
        "",
        help=f"""
        For simulated GPUs: a JSON file giving each GPU's utilization, e.g.
        ``/tmp/gpu-utilization.json`` holding ``{{"GPU-…": 80}}`` or
        ``{{"GPU-…": {{"utilization": 80, "memory_used_bytes": 1073741824,
        "power_watts": 450}}}}`` (percent, bytes and watts; each key optional;
        ``"problem": "GPU is lost"`` makes the GPU read as unhealthy).
        Read again whenever it changes; a missing file or GPU reads as 0. Empty:
        always 0. Each simulated GPU's energy counter grows by its power (without
        ``power_watts``: 60 W + 6 W per percent of utilization) times the time
        between two samples. Defaults to the environment variable
        ``{SIMULATED_UTILIZATION_ENV}``.
        """,
    ).tag(config=True)

    @default("simulated_utilization_file")
    def _simulated_utilization_file_from_env(self):
        return os.environ.get(SIMULATED_UTILIZATION_ENV, "")

    def make_sampler(
        self, inventory_source: GPUInventory, *, clock: Callable[[], datetime] = utcnow
    ) -> NVMLSampler | SimulatedSampler:
        """A :class:`SimulatedSampler` for simulated GPUs, an :class:`NVMLSampler` otherwise."""
        if inventory_source.simulated:
            return SimulatedSampler(
                inventory_source.discover(),
                self.simulated_utilization_file or None,
                clock=clock,
                log=self.log,
            )
        # a static list names the GPUs NVML cannot identify; NVML itself is read at open()
        static = inventory_source.discover() if inventory_source.static else None
        return NVMLSampler(inventory=static, clock=clock, log=self.log)


async def run_blocking(func: Callable, *args, executor=None):
    """``func(*args)`` in ``executor`` (default: the loop's), off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(func, *args))


async def sample_in_executor(sampler: NVMLSampler | SimulatedSampler, executor=None) -> Tick:
    """``sampler.sample()`` off the event loop. Concurrent calls wait for each other."""
    return await run_blocking(sampler.sample, executor=executor)
