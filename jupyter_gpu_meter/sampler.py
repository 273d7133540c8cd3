"""GPU sampling for the meter service: one reading per GPU and per GPU process, each tick.

Two samplers with one interface (``open()``, ``sample() -> Tick``, ``close()``),
both blocking, so the service calls them through :func:`sample_in_executor`:

- :class:`NVMLSampler` reads the NVIDIA driver through nvidia-ml-py. Per GPU and
  tick it calls ``nvmlDeviceGetUtilizationRates``, ``nvmlDeviceGetMemoryInfo``,
  ``nvmlDeviceGetPowerUsage``, ``nvmlDeviceGetTemperature`` (GPU sensor),
  ``nvmlDeviceGetComputeRunningProcesses`` and
  ``nvmlDeviceGetProcessUtilization(handle, last_seen)``. The last one returns
  every per-process sample newer than ``last_seen``, kept per GPU, so no sample
  is lost or counted twice between two ticks. The driver reports host PIDs;
  :func:`container_of_pid` maps them to Docker containers.
- :class:`SimulatedSampler` reads simulated GPUs' utilization from a JSON file
  that a test or a demo writes.

:class:`RollupAggregator` (pure) folds ticks into per-minute rows for the ledger.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from traitlets import Float, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from .clock import as_utc, utcnow
from .gpus import GPU, GPUInventory, Inventory
from .ledger.records import RollupRow, truncate_to_minute

SIMULATED_UTILIZATION_ENV = "JUPYTER_GPU_METER_SIMULATED_UTILIZATION"

_log = logging.getLogger(__name__)


# --- readings ------------------------------------------------------------------


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


# --- PID -> container ------------------------------------------------------------

# cgroup v1 and cgroupfs v2: ".../docker/<id>"; systemd (v1 or v2): ".../docker-<id>.scope"
_DOCKER_CGROUP = re.compile(r"/docker(?:/([0-9a-f]{64})|-([0-9a-f]{64})\.scope)(?=/|$)")


def container_from_cgroup(text: str) -> str | None:
    """The Docker container id in the text of a ``/proc/<pid>/cgroup`` file; None if none.

    The first line that names a container wins; within a line (Docker in Docker),
    the innermost container, the one the process runs in.
    """
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        found = _DOCKER_CGROUP.findall(path)
        if found:
            plain, scope = found[-1]
            return plain or scope
    return None


def _start_time(proc_root: str, pid: int) -> bytes | None:
    """Field 22 of ``/proc/<pid>/stat``: when the process started (clock ticks since boot)."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()  # fields[0] is field 3 (comm may hold spaces)
    return fields[19] if len(fields) > 19 else None


class ContainerLookup:
    """Host PID -> Docker container id, cached per process.

    A cache entry is keyed by the PID and the process's start time, so a reused
    PID never inherits the old process's container. At most ``maxsize`` entries,
    least recently used dropped first.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._cache: OrderedDict[tuple[str, int, bytes], str | None] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, pid: int, proc_root: str = "/proc") -> str | None:
        if pid <= 0:
            return None
        started = _start_time(proc_root, pid)
        if started is None:
            return None
        key = (proc_root, pid, started)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            with open(f"{proc_root}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
                container = container_from_cgroup(f.read())
        except OSError:
            container = None
        if _start_time(proc_root, pid) != started:
            return None  # the process ended (its PID maybe reused) while we read
        with self._lock:
            self._cache[key] = container
            while len(self._cache) > self.maxsize:
                self._cache.popitem(last=False)
        return container

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


_container_lookup = ContainerLookup()


def container_of_pid(pid: int, proc_root: str = "/proc") -> str | None:
    """The Docker container id (64 hex digits) host process ``pid`` runs in.

    Reads ``<proc_root>/<pid>/cgroup`` (cgroup v1, v2 with systemd or cgroupfs,
    nested containers). None for a process outside Docker, a missing PID or an
    unreadable file. Blocking (reads /proc); cached per process.
    """
    return _container_lookup(pid, proc_root)


# --- NVML --------------------------------------------------------------------------

_NO_DRIVER = "no NVIDIA driver library: metering runtime only, no utilization"


@dataclass
class _Device:
    """What the NVML sampler keeps about one GPU between ticks."""

    index: int
    uuid: str
    model: str = "unknown"
    memory_total_bytes: int = 0
    handle: object = None
    #: newest process-utilization sample already counted (µs, the driver's clock)
    last_seen_us: int = 0
    problem: str = ""
    #: kinds of failure (NVML error class names) logged since the GPU was last healthy
    failures_logged: set[str] = field(default_factory=set)
    #: (call, error) pairs logged once for the life of the sampler
    notes_logged: set[tuple[str, str]] = field(default_factory=set)


class _DeviceFailed(Exception):
    def __init__(self, call: str, error: Exception) -> None:
        super().__init__(call, error)
        self.call = call
        self.error = error


def _sample_fields(samples) -> list[tuple[int, int, int]]:
    """(pid, timeStamp, smUtil) of NVML process utilization samples.

    Read through the ctypes fields themselves: pynvml's structures wrap every
    attribute read in a Python method (it decodes bytes, which these integer
    fields never are), and a tick reads three per process.
    """
    if not samples:
        return []
    kind = type(samples[0])
    if not issubclass(kind, ctypes.Structure):
        return [(s.pid, s.timeStamp, s.smUtil) for s in samples]
    pid, stamp, sm_util = kind.pid.__get__, kind.timeStamp.__get__, kind.smUtil.__get__
    return [(pid(s), stamp(s), sm_util(s)) for s in samples]


def _mean(values: list[int] | None) -> int | None:
    return round(sum(values) / len(values)) if values else None


class NVMLSampler:
    """Reads every GPU through NVML. Blocking: call it off the event loop.

    An NVML error on one GPU never stops the tick or touches the other GPUs:
    a call the GPU does not support (or may not be made) leaves that field None;
    any other error (GPU lost, unknown) reports the GPU unhealthy with the error,
    and its handle is fetched again on the next tick. Each kind of error is
    logged once per GPU, and so is the recovery.

    ``inventory`` names GPUs that NVML cannot even identify at ``open()``;
    ``proc_root`` is where host PIDs are looked up.
    """

    def __init__(
        self,
        *,
        inventory: Inventory | None = None,
        proc_root: str = "/proc",
        clock: Callable[[], datetime] = utcnow,
        log: logging.Logger | None = None,
    ) -> None:
        self.inventory = inventory
        self.proc_root = proc_root
        self.clock = clock
        self.log = log or _log
        #: the NVIDIA driver version, known after open()
        self.driver_version = ""
        self._nvml = None
        self._devices: list[_Device] = []
        self._running_processes: Callable | None = None
        #: PID -> container of the processes of the previous and of this tick
        self._containers_before: dict[int, str | None] = {}
        self._containers_now: dict[int, str | None] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> NVMLSampler:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Start NVML and find the GPUs. Raises :class:`SamplerUnavailable` without a driver."""
        with self._lock:
            if self._nvml is not None:
                return
            try:
                import pynvml
            except ImportError as e:  # pragma: no cover - nvidia-ml-py is a dependency
                raise SamplerUnavailable(f"{_NO_DRIVER} (nvidia-ml-py is not installed)") from e
            try:
                pynvml.nvmlInit()
            except (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded) as e:
                raise SamplerUnavailable(f"{_NO_DRIVER} (NVML: {e})") from e
            except pynvml.NVMLError as e:
                raise SamplerUnavailable(
                    f"NVML failed to start ({e}): metering runtime only, no utilization"
                ) from e
            try:
                self.driver_version = pynvml.nvmlSystemGetDriverVersion()
                count = pynvml.nvmlDeviceGetCount()
            except pynvml.NVMLError as e:
                pynvml.nvmlShutdown()
                raise SamplerUnavailable(
                    f"NVML cannot list the GPUs ({e}): metering runtime only, no utilization"
                ) from e
            self._nvml = pynvml
            self._running_processes = pynvml.nvmlDeviceGetComputeRunningProcesses
            known = {gpu.index: gpu for gpu in self.inventory.gpus} if self.inventory else {}
            # opened again: samples counted before close() are not counted again
            last_seen = {device.uuid: device.last_seen_us for device in self._devices}
            self._devices = []
            for index in range(count):
                gpu = known.get(index)
                device = _Device(index, gpu.uuid if gpu else f"unknown-index-{index}")
                if gpu:
                    device.model, device.memory_total_bytes = gpu.model, gpu.memory_total_bytes
                self._devices.append(device)
                try:
                    self._attach(device)
                except _DeviceFailed as failure:
                    self._failed(device, failure)
                device.last_seen_us = last_seen.get(device.uuid, 0)
            self.log.info(
                "NVML sampler: driver %s, %d GPU(s)%s",
                self.driver_version,
                count,
                "".join(
                    f", {d.index}: {d.uuid} unhealthy ({d.problem})"
                    for d in self._devices
                    if d.problem
                ),
            )

    def close(self) -> None:
        """Shut NVML down (it is reference counted per process). Safe to call twice."""
        with self._lock:
            nvml, self._nvml = self._nvml, None
            if nvml is None:
                return
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as e:
                self.log.warning("NVML shutdown failed: %s", e)

    def sample(self) -> Tick:
        """Read every GPU once."""
        with self._lock:
            if self._nvml is None:
                raise RuntimeError("NVMLSampler.sample() before open()")
            at = self.clock()
            started = time.perf_counter()
            gpus, processes = [], []
            self._containers_now = {}
            for device in self._devices:
                reading, device_processes = self._read(device)
                gpus.append(reading)
                processes.extend(device_processes)
            self._containers_before = self._containers_now
            return Tick(at, tuple(gpus), tuple(processes), time.perf_counter() - started)

    # one GPU ---------------------------------------------------------------------

    def _attach(self, device: _Device) -> None:
        """Fetch the GPU's handle, UUID and name again; _DeviceFailed if it does not answer."""
        nvml = self._nvml
        call = "nvmlDeviceGetHandleByIndex"
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(device.index)
            call = "nvmlDeviceGetUUID"
            uuid = nvml.nvmlDeviceGetUUID(handle)
            call = "nvmlDeviceGetName"
            model = nvml.nvmlDeviceGetName(handle)
        except nvml.NVMLError as e:
            raise _DeviceFailed(call, e) from e
        if uuid != device.uuid:
            if not device.uuid.startswith("unknown-index-"):
                self.log.warning("GPU %d is now %s (was %s)", device.index, uuid, device.uuid)
            device.uuid, device.last_seen_us = uuid, 0
        device.model = model
        device.handle = handle

    def _read(self, device: _Device) -> tuple[GPUReading, list[ProcessReading]]:
        nvml = self._nvml
        try:
            if device.handle is None:
                self._attach(device)
            handle = device.handle
            rates = self._call(
                device, "nvmlDeviceGetUtilizationRates", nvml.nvmlDeviceGetUtilizationRates, handle
            )
            memory = self._call(
                device, "nvmlDeviceGetMemoryInfo", nvml.nvmlDeviceGetMemoryInfo, handle
            )
            power_mw = self._call(
                device, "nvmlDeviceGetPowerUsage", nvml.nvmlDeviceGetPowerUsage, handle
            )
            temperature = self._call(
                device,
                "nvmlDeviceGetTemperature",
                nvml.nvmlDeviceGetTemperature,
                handle,
                nvml.NVML_TEMPERATURE_GPU,
            )
            running = self._call(
                device, "nvmlDeviceGetComputeRunningProcesses", self._processes_of, handle
            )
            # last: once it returns, its samples are taken and last_seen moves on
            samples = self._call(
                device,
                "nvmlDeviceGetProcessUtilization",
                nvml.nvmlDeviceGetProcessUtilization,
                handle,
                device.last_seen_us,
                quiet=(nvml.NVML_ERROR_NOT_FOUND, nvml.NVML_SUCCESS),  # no new samples
            )
        except _DeviceFailed as failure:
            device.handle = None
            self._failed(device, failure)
            reading = GPUReading(
                device.uuid,
                device.index,
                device.model,
                None,
                0,
                device.memory_total_bytes,
                healthy=False,
                problem=device.problem,
            )
            return reading, []
        if device.problem:
            self.log.info(
                "GPU %d (%s) recovered (was: %s)", device.index, device.uuid, device.problem
            )
            device.problem = ""
            device.failures_logged.clear()
        if memory is not None:
            device.memory_total_bytes = memory.total
        reading = GPUReading(
            device.uuid,
            device.index,
            device.model,
            None if rates is None else int(rates.gpu),
            0 if memory is None else int(memory.used),
            device.memory_total_bytes,
            None if power_mw is None else power_mw / 1000.0,
            None if temperature is None else int(temperature),
        )
        return reading, self._processes(device, running or [], samples or [])

    def _processes(self, device: _Device, running, samples) -> list[ProcessReading]:
        """Running processes, then processes that left samples but have exited since."""
        sm: dict[int, list[int]] = {}
        last_seen = newest = device.last_seen_us
        for pid, timestamp, sm_util in _sample_fields(samples):
            if timestamp > last_seen:  # never count one twice
                sm.setdefault(pid, []).append(sm_util)
                newest = max(newest, timestamp)
        device.last_seen_us = newest
        memory: dict[int, int | None] = {}
        for process in running:  # the same PID once per MIG instance: add them up
            pid, used = process.pid, process.usedGpuMemory
            if pid in memory and memory[pid] is not None and used is not None:
                used += memory[pid]
            memory[pid] = used
        pids = list(memory) + sorted(pid for pid in sm if pid not in memory)
        return [
            ProcessReading(
                device.uuid, pid, self._container(pid), memory.get(pid), _mean(sm.get(pid))
            )
            for pid in pids
        ]

    def _container(self, pid: int) -> str | None:
        """container_of_pid, remembered while the PID stays on a GPU from one tick to the next.

        A PID that NVML lists again one tick later is taken to be the same process
        (its PID could only have been reused if the process ended and another GPU
        process got the same PID within one interval); this spares the /proc reads.
        """
        if pid in self._containers_before:
            container = self._containers_before[pid]
        else:
            container = container_of_pid(pid, self.proc_root)
        self._containers_now[pid] = container
        return container

    def _processes_of(self, handle):
        """nvmlDeviceGetComputeRunningProcesses; the v2 struct where the driver has no v3."""
        nvml = self._nvml
        try:
            return self._running_processes(handle)
        except nvml.NVMLLibraryMismatchError:  # _v2 raises NVMLError_FunctionNotFound
            self.log.info("this NVIDIA driver has no v3 process list: using v2")
            self._running_processes = nvml.nvmlDeviceGetComputeRunningProcesses_v2
            return self._running_processes(handle)

    def _call(self, device: _Device, call: str, func: Callable, *args, quiet: Iterable[int] = ()):
        """``func(*args)``; None when the GPU cannot answer this call; _DeviceFailed when broken."""
        nvml = self._nvml
        try:
            return func(*args)
        except nvml.NVMLError as e:
            if e.value in quiet or e.value == nvml.NVML_ERROR_INSUFFICIENT_SIZE:
                return None  # nothing new, or the list grew between two calls: next tick
            if e.value not in (nvml.NVML_ERROR_NOT_SUPPORTED, nvml.NVML_ERROR_NO_PERMISSION):
                raise _DeviceFailed(call, e) from e
            note = (call, type(e).__name__)
            if note not in device.notes_logged:
                device.notes_logged.add(note)
                self.log.info(
                    "GPU %d (%s): %s: %s; that reading stays empty",
                    device.index,
                    device.uuid,
                    call,
                    e,
                )
            return None

    def _failed(self, device: _Device, failure: _DeviceFailed) -> None:
        device.problem = f"{failure.error} ({failure.call})"
        kind = type(failure.error).__name__
        if kind not in device.failures_logged:
            device.failures_logged.add(kind)
            self.log.warning(
                "GPU %d (%s) unhealthy: %s; trying again every tick",
                device.index,
                device.uuid,
                device.problem,
            )


# --- simulated GPUs ----------------------------------------------------------------


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


# --- configuration -------------------------------------------------------------------


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
        ``{{"GPU-…": {{"utilization": 80, "memory_used_bytes": 1073741824}}}}``
        (percent and bytes). Read again whenever it changes; a missing file or
        GPU reads as 0. Empty: always 0. Defaults to the environment variable
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


# --- per-minute rollups (pure) -------------------------------------------------------


def minute_of(at: datetime) -> datetime:
    """The UTC minute ``at`` falls in (truncated)."""
    return truncate_to_minute(as_utc(at))


@dataclass
class _Rollup:
    samples: int = 0
    util_sum: int = 0
    util_max: int = 0
    memory_max_bytes: int = 0


class RollupAggregator:
    """Folds ticks into per-minute, per-container, per-GPU rows. Pure.

    Rows are cumulative: a minute's row grows as its ticks arrive, and the
    ledger upserts by (session, GPU, minute, writer), so writing a row again is
    harmless. A GPU whose utilization is unknown (None) adds no sample, and its
    memory is not counted either.
    """

    def __init__(self, writer_id: str) -> None:
        self.writer_id = writer_id
        self._rollups: dict[tuple[str, str, datetime], _Rollup] = {}
        self._current: datetime | None = None
        self._forgotten_before: datetime | None = None

    def add(self, tick: Tick, owners: Mapping[str, str | None]) -> bool:
        """Count the tick's GPUs held by a container (``owners``: GPU UUID -> container id).

        False (and nothing counted) for a tick in a minute already forgotten,
        whose row was written complete: counting it would shrink that row.
        """
        minute = minute_of(tick.at)
        if self._forgotten_before is not None and minute < self._forgotten_before:
            return False
        if self._current is None or minute > self._current:
            self._current = minute
        for gpu in tick.gpus:
            container = owners.get(gpu.uuid)
            if not container or gpu.utilization is None:
                continue
            rollup = self._rollups.setdefault((container, gpu.uuid, minute), _Rollup())
            rollup.samples += 1
            rollup.util_sum += gpu.utilization
            rollup.util_max = max(rollup.util_max, gpu.utilization)
            rollup.memory_max_bytes = max(rollup.memory_max_bytes, gpu.memory_used_bytes)
        return True

    def rows(self, include_current: bool = True) -> list[RollupRow]:
        """Every row kept, by minute; the newest tick's minute only if ``include_current``."""
        return [
            RollupRow(
                container,
                uuid,
                minute,
                self.writer_id,
                rollup.samples,
                rollup.util_sum / rollup.samples,
                rollup.util_max,
                rollup.memory_max_bytes,
            )
            for (container, uuid, minute), rollup in sorted(
                self._rollups.items(), key=lambda item: (item[0][2], item[0][0], item[0][1])
            )
            if include_current or minute != self._current
        ]

    def forget_before(self, minute: datetime) -> None:
        """Drop the minutes before ``minute`` (written, complete); ignore later ticks for them."""
        minute = minute_of(minute)
        if self._forgotten_before is None or minute > self._forgotten_before:
            self._forgotten_before = minute
        self._rollups = {key: r for key, r in self._rollups.items() if key[2] >= minute}
