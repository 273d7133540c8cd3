"""The NVML sampler: every GPU and GPU process through the NVIDIA driver (nvidia-ml-py).

Per GPU and tick it calls ``nvmlDeviceGetUtilizationRates``,
``nvmlDeviceGetMemoryInfo``, ``nvmlDeviceGetPowerUsage``,
``nvmlDeviceGetTemperature`` (GPU sensor), ``nvmlDeviceGetComputeRunningProcesses``
and ``nvmlDeviceGetProcessUtilization(handle, last_seen)``. The last one returns
every per-process sample newer than ``last_seen``, kept per GPU, so no sample is
lost or counted twice between two ticks. The driver reports host PIDs;
:func:`~jupyter_gpu_meter.sampler.attribution.container_of_pid` maps them to
Docker containers.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from ..clock import utcnow
from ..gpus import Inventory
from .attribution import container_of_pid
from .readings import GPUReading, ProcessReading, SamplerUnavailable, Tick

_log = logging.getLogger(__name__)

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
