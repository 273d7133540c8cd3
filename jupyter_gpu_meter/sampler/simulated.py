"""The simulated sampler: simulated GPUs' utilization from a JSON file a test or demo writes."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from ..clock import utcnow
from ..gpus import GPU, Inventory
from .readings import GPUReading, Tick

_log = logging.getLogger(__name__)


def _simulated_values(data) -> dict[str, tuple[int, int]]:
    """{uuid: (utilization, memory used)} from the simulated utilization file's JSON."""
    accepted = (
        'expected {"GPU-uuid": 80} or '
        '{"GPU-uuid": {"utilization": 80, "memory_used_bytes": 1073741824}}'
    )
    if not isinstance(data, dict):
        raise ValueError(accepted)
    values = {}
    for uuid, value in data.items():
        if isinstance(value, dict):
            utilization, memory = value.get("utilization", 0), value.get("memory_used_bytes", 0)
        else:
            utilization, memory = value, 0
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in (utilization, memory)
        ):
            raise ValueError(f"{uuid}: {value!r}: {accepted}")
        values[uuid] = (max(0, min(100, round(utilization))), max(0, int(memory)))
    return values


class SimulatedSampler:
    """Readings for simulated GPUs, from a JSON file a test or demo writes.

    The file maps GPU UUIDs to a utilization percentage (``{"GPU-…": 80}``) or
    to ``{"utilization": 80, "memory_used_bytes": 1073741824}``. It is read
    again whenever it changes; a missing file or UUID reads as 0. A file that is
    not valid JSON (caught mid-write, say) keeps the previous values. No
    processes, no power, no temperature.
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
        self._values: dict[str, tuple[int, int]] = {}
        self._seen: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
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
            gpus = tuple(
                GPUReading(
                    gpu.uuid,
                    gpu.index,
                    gpu.model,
                    values.get(gpu.uuid, (0, 0))[0],
                    values.get(gpu.uuid, (0, 0))[1],
                    gpu.memory_total_bytes,
                    healthy=gpu.healthy,
                    problem=gpu.problem,
                )
                for gpu in self.gpus
            )
            return Tick(at, gpus, (), time.perf_counter() - started)

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
