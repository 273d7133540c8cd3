"""The NVML sampler: every GPU and GPU process through the NVIDIA driver (nvidia-ml-py).

Per GPU and tick it calls ``nvmlDeviceGetUtilizationRates``,
``nvmlDeviceGetMemoryInfo``, ``nvmlDeviceGetPowerUsage``,
``nvmlDeviceGetTemperature`` (GPU sensor), ``nvmlDeviceGetTotalEnergyConsumption``,
``nvmlDeviceGetComputeRunningProcesses``, on GPUs with GPM (Hopper and later)
``nvmlGpmSampleGet`` and ``nvmlGpmMetricsGet`` (:mod:`.gpm`), and last
``nvmlDeviceGetProcessUtilization(handle, last_seen)``. That one returns every
per-process sample newer than ``last_seen``, kept per GPU, so no sample is lost
or counted twice between two ticks. The driver reports host PIDs;
:func:`~jupyter_gpu_meter.sampler.attribution.attribute_pid` says which Docker
container each runs in (or the host, or unknown) and its name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from ..clock import utcnow
from ..gpus import Inventory
from .attribution import Attribution
from .gpm import GpmSM
from .processes import gpu_processes
from .readings import GPUReading, SamplerUnavailable, Tick

_log = logging.getLogger(__name__)

_NO_DRIVER = "no NVIDIA driver library: metering runtime only, no utilization"
_GPM_CALLS = "nvmlGpmSampleGet/nvmlGpmMetricsGet"

# tuple.__new__ skips the named tuple's Python-level __new__ (every field is given, in
# order); object.__getattribute__ skips pynvml's per-attribute wrapper of its
# structures (it decodes bytes; these fields are numbers)
_new = tuple.__new__
_get = object.__getattribute__


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
    #: all of the GPU's readings answered last time: read them in one go, not call by call
    fast: bool = True
    #: the GPU's GPM samples, None without GPM
    gpm: GpmSM | None = None
    #: kinds of failure (NVML error class names) logged since the GPU was last healthy
    failures_logged: set[str] = field(default_factory=set)
    #: (call, error) pairs logged once for the life of the sampler
    notes_logged: set[tuple[str, str]] = field(default_factory=set)


class _DeviceFailed(Exception):
    def __init__(self, call: str, error: Exception) -> None:
        super().__init__(call, error)
        self.call = call
        self.error = error


class NVMLSampler:
    """Reads every GPU through NVML. Blocking: call it off the event loop.

    An NVML error on one GPU never stops the tick or touches the other GPUs:
    a call the GPU does not support (or may not be made, or the driver does
    not have) leaves that field None; any other error (GPU lost, unknown)
    reports the GPU unhealthy with the error, and its handle is fetched again
    on the next tick. Each kind of error is logged once per GPU, and so is the
    recovery.

    Each process gets its container, where it runs and its name from
    :func:`~.attribution.attribute_pid` when its PID first shows; a PID the
    previous tick listed keeps what it had (no /proc read at all), see
    :func:`~.processes.gpu_processes`.

    ``inventory`` names GPUs that NVML cannot even identify at ``open()``;
    ``proc_root`` is where host PIDs are looked up. All state belongs to the
    thread that holds the sampler's lock (one tick at a time).
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
        #: PID -> attribution of the processes of the previous tick
        self._attributed: dict[int, Attribution] = {}
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
                "NVML sampler: driver %s, %d GPU(s)%s%s",
                self.driver_version,
                count,
                "".join(f", GPM on {d.index}" for d in self._devices if d.gpm),
                "".join(
                    f", {d.index}: {d.uuid} unhealthy ({d.problem})"
                    for d in self._devices
                    if d.problem
                ),
            )

    def close(self) -> None:
        """Free the GPM samples and shut NVML down (reference counted). Safe to call twice."""
        with self._lock:
            nvml, self._nvml = self._nvml, None
            if nvml is None:
                return
            for device in self._devices:
                if device.gpm is not None:
                    device.gpm.free()
                    device.gpm = None
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
            before, now, proc_root = self._attributed, {}, self.proc_root
            for device in self._devices:
                reading, running, samples = self._read(device)
                gpus.append(reading)
                if running or samples:
                    found, device.last_seen_us = gpu_processes(
                        device.uuid, running, samples, device.last_seen_us, before, now, proc_root
                    )
                    processes.extend(found)
            self._attributed = now
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
        device.fast = True
        self._attach_gpm(device, handle)

    def _attach_gpm(self, device: _Device, handle) -> None:
        """Ask whether the GPU has GPM; keep (or allocate, or free) its two samples."""
        nvml = self._nvml
        try:
            supported = bool(nvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
            if supported and device.gpm is None:
                device.gpm = GpmSM(nvml)
        except nvml.NVMLError as e:
            self._note(device, "nvmlGpmQueryDeviceSupport", e, "no GPM SM activity")
            supported = False
        if device.gpm is not None:
            if supported:
                device.gpm.restart()
            else:
                device.gpm.free()
                device.gpm = None

    def _read(self, device: _Device) -> tuple[GPUReading, list, list]:
        """The GPU's reading, its running processes and its new process samples."""
        nvml = self._nvml
        try:
            if device.handle is None:
                self._attach(device)
            handle = device.handle
            if device.fast:
                try:
                    rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                    power_mw = nvml.nvmlDeviceGetPowerUsage(handle)
                    temperature = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                    energy_mj = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                    running = self._running_processes(handle)
                except (nvml.NVMLError, nvml.NVMLLibraryMismatchError):
                    device.fast = False  # read call by call (a reading the GPU cannot give)
            if not device.fast:
                values = self._read_each(device, handle)
                device.fast = None not in values  # back to one go when all answer again
                rates, memory, power_mw, temperature, energy_mj, running = values
            sm_activity = None
            if device.gpm is not None:
                try:
                    sm_activity = device.gpm.read(handle)
                except nvml.NVMLError as e:
                    self._optional(device, _GPM_CALLS, e)
            # last: once it returns, its samples are taken and last_seen moves on
            try:
                samples = nvml.nvmlDeviceGetProcessUtilization(handle, device.last_seen_us)
            except nvml.NVMLError_NotFound:
                samples = None  # no new samples
            except nvml.NVMLError as e:
                samples = self._optional(device, "nvmlDeviceGetProcessUtilization", e)
        except _DeviceFailed as failure:
            device.handle = None
            if device.gpm is not None:
                device.gpm.restart()
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
            return reading, [], []
        if device.problem:
            self.log.info(
                "GPU %d (%s) recovered (was: %s)", device.index, device.uuid, device.problem
            )
            device.problem = ""
            device.failures_logged.clear()
        used = 0
        if memory is not None:
            used = _get(memory, "used")
            device.memory_total_bytes = _get(memory, "total")
        reading = _new(
            GPUReading,
            (
                device.uuid,
                device.index,
                device.model,
                None if rates is None else _get(rates, "gpu"),
                used,
                device.memory_total_bytes,
                None if power_mw is None else power_mw / 1000.0,
                temperature,
                True,
                "",
                energy_mj,
                sm_activity,
            ),
        )
        return reading, running or [], samples or []

    def _read_each(self, device: _Device, handle) -> tuple:
        """The readings call by call, for a GPU where one of them fails."""
        nvml = self._nvml
        values = [
            self._call(device, name, getattr(nvml, name), handle, *args)
            for name, args in (
                ("nvmlDeviceGetUtilizationRates", ()),
                ("nvmlDeviceGetMemoryInfo", ()),
                ("nvmlDeviceGetPowerUsage", ()),
                ("nvmlDeviceGetTemperature", (nvml.NVML_TEMPERATURE_GPU,)),
                ("nvmlDeviceGetTotalEnergyConsumption", ()),
            )
        ]
        name = "nvmlDeviceGetComputeRunningProcesses"
        return (*values, self._call(device, name, self._processes_of, handle))

    def _processes_of(self, handle):
        """nvmlDeviceGetComputeRunningProcesses; the v2 struct where the driver has no v3."""
        nvml = self._nvml
        try:
            return self._running_processes(handle)
        except nvml.NVMLLibraryMismatchError:  # _v2 raises NVMLError_FunctionNotFound
            self.log.info("this NVIDIA driver has no v3 process list: using v2")
            self._running_processes = nvml.nvmlDeviceGetComputeRunningProcesses_v2
            return self._running_processes(handle)

    def _call(self, device: _Device, call: str, func: Callable, *args):
        """``func(*args)``; None when the GPU cannot answer this call; _DeviceFailed when broken."""
        try:
            return func(*args)
        except self._nvml.NVMLError as e:
            return self._optional(device, call, e)

    def _optional(self, device: _Device, call: str, e: Exception):
        """None for an error that leaves one reading empty; raise _DeviceFailed for the others.

        Empty: the GPU does not support the call, may not make it, or the
        driver has no such function (logged once); the process list grew
        between two calls (the next tick reads it).
        """
        nvml = self._nvml
        if e.value == nvml.NVML_ERROR_INSUFFICIENT_SIZE:
            return None
        if e.value not in (
            nvml.NVML_ERROR_NOT_SUPPORTED,
            nvml.NVML_ERROR_NO_PERMISSION,
            nvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        ):
            raise _DeviceFailed(call, e) from e
        self._note(device, call, e, "that reading stays empty")
        return None

    def _note(self, device: _Device, call: str, e: Exception, meaning: str) -> None:
        note = (call, type(e).__name__)
        if note not in device.notes_logged:
            device.notes_logged.add(note)
            self.log.info("GPU %d (%s): %s: %s; %s", device.index, device.uuid, call, e, meaning)

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
