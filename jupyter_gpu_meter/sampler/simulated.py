"""The simulated sampler: simulated GPUs' utilization from a JSON file a test or demo writes.

Energy is simulated too: each GPU's counter starts at 0 when the sampler opens
and grows by the GPU's power times the sampler clock's time since the previous
sample (power from the file's ``"power_watts"``, else 60 W + 6 W per percent of
utilization), in whole milliwatts and microseconds, so the counter is exact.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from ..clock import utcnow
from ..gpus import GPU, Inventory
from .readings import GPUReading, Tick

_log = logging.getLogger(__name__)


#: the simulated power of a GPU without "power_watts": idle watts, and watts per percent
IDLE_WATTS = 60
WATTS_PER_PERCENT = 6


def simulated_power_mw(utilization: int) -> int:
    """A simulated GPU's power (mW) at ``utilization`` percent: 60 W + 6 W per percent."""
    return (IDLE_WATTS + WATTS_PER_PERCENT * utilization) * 1000


def _simulated_values(data) -> dict[str, tuple[int, int, int, str]]:
    """{uuid: (utilization, memory used, power in mW, problem)} from the simulated file's
    JSON; a "problem" (e.g. "GPU is lost") makes the GPU read as unhealthy."""
    accepted = (
        'expected {"GPU-uuid": 80} or {"GPU-uuid": {"utilization": 80, '
        '"memory_used_bytes": 1073741824, "power_watts": 450, "problem": "GPU is lost"}}'
    )
    if not isinstance(data, dict):
        raise ValueError(accepted)
    values = {}
    for uuid, value in data.items():
        problem = ""
        if isinstance(value, dict):
            utilization, memory = value.get("utilization", 0), value.get("memory_used_bytes", 0)
            power, problem = value.get("power_watts"), value.get("problem", "")
        else:
            utilization, memory, power = value, 0, None
        numbers = (utilization, memory) if power is None else (utilization, memory, power)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
            raise ValueError(f"{uuid}: {value!r}: {accepted}")
        if not isinstance(problem, str):
            raise ValueError(f'{uuid}: problem {problem!r}: give a text, e.g. "GPU is lost"')
        utilization = max(0, min(100, round(utilization)))
        power_mw = simulated_power_mw(utilization) if power is None else max(0, round(power * 1000))
        values[uuid] = (utilization, max(0, int(memory)), power_mw, problem)
    return values


_IDLE_MW = simulated_power_mw(0)
#: a GPU the file does not name: idle, healthy
_UNSET = (0, 0, _IDLE_MW, "")
_MICROSECOND = timedelta(microseconds=1)


class SimulatedSampler:
    """Readings for simulated GPUs, from a JSON file a test or demo writes.

    The file maps GPU UUIDs to a utilization percentage (``{"GPU-…": 80}``) or
    to ``{"utilization": 80, "memory_used_bytes": 1073741824, "power_watts":
    450}`` (each key optional). It is read again whenever it changes; a missing
    file or UUID reads as 0. A file that is not valid JSON (caught mid-write,
    say) keeps the previous values. Each reading has the power (``power_watts``,
    else 60 W + 6 W per percent) and an energy counter: mJ since :meth:`open`,
    the reading's power times the clock's time since the previous sample (each
    sample's power taken to have held since the one before). No processes, no
    temperature, no GPM.
    """

    driver_version = ""

    def __init__(
        self,
        inventory: Inventory | Iterable[GPU],
        utilization_file: str | os.PathLike[str] | None = None,
        clock: Callable[[], datetime] = utcnow,
        log: logging.Logger | None = None,
    ) -> None:
        gpus = inventory.gpus if isinstance(inventory, Inventory) else inventory
        self.gpus: tuple[GPU, ...] = tuple(gpus)
        self.utilization_file = os.fspath(utilization_file) if utilization_file else None
        self.clock = clock
        self.log = log or _log
        self._values: dict[str, tuple[int, int, int]] = {}
        self._seen: tuple[int, int, int] | None = None
        #: energy so far per GPU, in nJ (mW x µs): whole numbers, so no rounding drifts
        self._energy_nj: dict[str, int] = {}
        self._last_at: datetime | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        with self._lock:
            self._energy_nj = {gpu.uuid: 0 for gpu in self.gpus}
            self._last_at = self.clock()
        self.log.info(
            "simulated GPU sampler: %d GPU(s), utilization from %s",
            len(self.gpus),
            self.utilization_file or "nowhere (always 0)",
        )

    def close(self) -> None:
        pass

    def __enter__(self) -> SimulatedSampler:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sample(self) -> Tick:
        with self._lock:
            at = self.clock()
            started = time.perf_counter()
            values = self._read()
            # before open(): the counters start at the first sample; a clock going back adds 0
            last, self._last_at = self._last_at or at, at
            elapsed_us = max(0, (at - last) // _MICROSECOND)
            gpus = []
            for gpu in self.gpus:
                utilization, memory, power_mw, problem = values.get(gpu.uuid) or _UNSET
                energy_nj = self._energy_nj.get(gpu.uuid, 0) + power_mw * elapsed_us
                self._energy_nj[gpu.uuid] = energy_nj
                gpus.append(
                    GPUReading(
                        gpu.uuid,
                        gpu.index,
                        gpu.model,
                        utilization,
                        memory,
                        gpu.memory_total_bytes,
                        power_mw / 1000,
                        healthy=gpu.healthy and not problem,
                        problem=gpu.problem or problem,
                        energy_mj=energy_nj // 1_000_000,
                    )
                )
            return Tick(at, tuple(gpus), (), time.perf_counter() - started)

    def _read(self) -> dict[str, tuple[int, int]]:
        if not self.utilization_file:
            return {}
        try:
            st = os.stat(self.utilization_file)
        except OSError:
            self._seen, self._values = None, {}
            return self._values
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature != self._seen:
            self._seen = signature
            try:
                with open(self.utilization_file, encoding="utf-8") as f:
                    self._values = _simulated_values(json.load(f))
            except (OSError, ValueError) as e:
                self.log.warning(
                    "simulated utilization file %s unreadable (%s): keeping the last values",
                    self.utilization_file,
                    e,
                )
        return self._values
