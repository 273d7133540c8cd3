"""A stand-in ``libnvidia-ml.so.1`` so the real ``pynvml`` runs against simulated GPUs.

``fakenvml.c`` implements the NVML entry points our code uses and reads the GPUs'
state from the text file named by ``$FAKE_NVML_STATE``; it re-reads the file
whenever its path, inode, size or mtime changes, so a test can change the state
between two NVML calls in the same process.  :class:`FakeNVML` writes that file.

How the real bindings find the fake: ``pynvml`` does ``CDLL("libnvidia-ml.so.1")``.
:func:`load` opens the built library first (by its full path); glibc's ``dlopen``
of a bare name returns an already-loaded object whose ``DT_SONAME`` matches, so
pynvml gets the fake without ``LD_LIBRARY_PATH``, even where a real driver library
exists on disk.  This must happen before anything in the process opens a real
``libnvidia-ml.so.1``.  A subprocess (the meter service, a CLI) gets it through
the environment instead: :func:`subprocess_env` / :meth:`FakeNVML.env` set
``LD_LIBRARY_PATH`` to the build folder and ``FAKE_NVML_STATE``.

State file format (one item per line, ``#`` comments and blank lines ignored;
numbers are decimal or ``0x`` hex; a GPU exists when any ``gpu N`` line names it,
the count is the highest index + 1)::

    generation 3                      # ignored; bumped on every write
    driver 550.54.15                  # nvmlSystemGetDriverVersion
    cuda 12040                        # nvmlSystemGetCudaDriverVersion(_v2)
    nvml_version 12.550.54.15         # optional, default "<cuda/1000>.<driver>"
    gpu 0 uuid GPU-...                # value = rest of the line
    gpu 0 name NVIDIA H100 80GB HBM3
    gpu 0 pci 00000000:17:00.0        # domain:bus:device.0 (hex)
    gpu 0 pci_device_id 0x233010DE
    gpu 0 minor 0                     # nvmlDeviceGetMinorNumber (/dev/nvidiaN)
    gpu 0 compute_capability 9.0
    gpu 0 memory_total 85520809984    # bytes
    gpu 0 memory_used 1073741824      # bytes, excluding the reserved memory
    gpu 0 memory_reserved 0           # bytes (MemoryInfo_v2 "reserved")
    gpu 0 util 37                     # nvmlDeviceGetUtilizationRates().gpu
    gpu 0 memory_util 12              # nvmlDeviceGetUtilizationRates().memory
    gpu 0 power_mw 250000
    gpu 0 temperature 55
    gpu 0 ecc_corrected 0
    gpu 0 ecc_uncorrected 0
    gpu 0 retired_pages_pending 0
    gpu 0 energy_mj 123456789         # nvmlDeviceGetTotalEnergyConsumption (mJ)
    gpu 0 gpm 1                       # GPM (Hopper+): nvmlGpmQueryDeviceSupport says yes
    gpu 0 sm_activity 42.5            # what nvmlGpmMetricsGet gives for SM_UTIL (%)
    gpu 0 lost 1                      # every call on it: NVML_ERROR_GPU_IS_LOST
    gpu 0 unsupported power           # that call: NVML_ERROR_NOT_SUPPORTED (repeatable)
    gpu 0 process_list_growth 0       # processes that appear between the count and the list call
    process 0 1234 used_memory 1073741824 gpu_instance 0 compute_instance 0
    sample 0 1234 1700000000000000 55 20 0 0   # gpu pid timestamp_us sm mem enc dec
    topology 0 1 10                   # symmetric; default 50 (SYSTEM), same GPU 0

In ``process`` lines the keys are optional: no ``used_memory`` means
NVML_VALUE_NOT_AVAILABLE (pynvml turns it into ``None``), no instance ids mean
0xFFFFFFFF (not MIG), like the real driver.  ``unsupported`` names, short or
the NVML function name (a versioned function also matches its unversioned name):
``name uuid index minor pci compute_capability memory utilization power
temperature ecc retired_pages topology processes process_utilization energy
gpm`` (``gpm``: every GPM call, a driver without GPM).

GPM: ``nvmlGpmSampleAlloc``/``Free`` hand out sample buffers (the non-NVML
``fakeNvmlGpmSamplesAllocated()`` counts those not freed, see
:func:`gpm_samples_allocated`); ``nvmlGpmSampleGet`` on a GPU with ``gpm 1``
records its ``sm_activity`` (NOT_SUPPORTED without); ``nvmlGpmMetricsGet``
between two samples of one GPU, the first taken first (else INVALID_ARGUMENT),
gives the second sample's value for ``NVML_GPM_METRIC_SM_UTIL`` and a per-metric
NOT_SUPPORTED for any other metric.

Semantics: a missing state file at ``nvmlInit`` gives NVML_ERROR_DRIVER_NOT_LOADED
(no driver); once initialized, a file that disappears keeps the last state; a line
that cannot be parsed makes the call return NVML_ERROR_UNKNOWN and prints the line
on stderr.  ``nvmlDeviceGetHandleByIndex``/``ByUUID`` on a lost GPU give
GPU_IS_LOST, and so does an old handle whose index is beyond the current count.
Process utilization returns every sample of that GPU with ``timestamp >
lastSeen`` (in file order, several per PID possible); none gives NOT_FOUND.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "BuildError",
    "FakeNVML",
    "LIB_NAME",
    "SOURCE",
    "build",
    "gpm_samples_allocated",
    "load",
    "reset",
    "subprocess_env",
]

SOURCE = Path(__file__).with_name("fakenvml.c")
LIB_NAME = "libnvidia-ml.so.1"
_CFLAGS = ["-O2", "-g", "-Wall", "-shared", "-fPIC", f"-Wl,-soname,{LIB_NAME}"]
_LIBS = ["-lpthread"]

# NVML topology levels (pynvml.NVML_TOPOLOGY_*)
TOPOLOGY_INTERNAL = 0
TOPOLOGY_SINGLE = 10
TOPOLOGY_MULTIPLE = 20
TOPOLOGY_HOSTBRIDGE = 30
TOPOLOGY_NODE = 40
TOPOLOGY_SYSTEM = 50

H100_MEMORY = 85520809984  # 81559 MiB, what NVML reports for an H100 80GB HBM3

#: this pytest-xdist worker's number (gw1: 1), 0 outside xdist
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


class BuildError(RuntimeError):
    """gcc is missing or the library did not compile."""


def build(
    dest_dir: str | os.PathLike[str],
    *,
    cc: str | None = None,
    extra_cflags: list[str] | None = None,
) -> Path:
    """Compile ``fakenvml.c`` into ``dest_dir/<hash>/libnvidia-ml.so.1``; return its path.

    Cached by the hash of the source and flags; safe to call concurrently (the
    library is compiled to a temporary name and renamed into place).
    """
    cc = cc or os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise BuildError("no C compiler (gcc) found to build the fake libnvidia-ml")
    flags = _CFLAGS + list(extra_cflags or [])
    digest = hashlib.sha256(SOURCE.read_bytes() + "\0".join([cc, *flags]).encode()).hexdigest()
    out_dir = Path(dest_dir) / digest[:16]
    out = out_dir / LIB_NAME
    if out.exists():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", dir=out_dir)
    os.close(fd)
    try:
        proc = subprocess.run(
            [cc, *flags, "-o", tmp, str(SOURCE), *_LIBS],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BuildError(f"{cc} failed building {SOURCE}:\n{proc.stderr}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def load(lib_path: str | os.PathLike[str]) -> ctypes.CDLL:
    """Load the fake into this process so pynvml's ``CDLL("libnvidia-ml.so.1")`` gets it.

    Raises RuntimeError when that does not work: pynvml already holds another
    library, or a real ``libnvidia-ml.so.1`` was loaded in this process first.
    Then run the code under test in a subprocess with :func:`subprocess_env`.
    """
    lib = ctypes.CDLL(str(lib_path), mode=ctypes.RTLD_GLOBAL)
    by_soname = ctypes.CDLL(LIB_NAME)
    if not hasattr(by_soname, "fakeNvmlReset"):
        raise RuntimeError(
            f"a real {LIB_NAME} is already loaded in this process; "
            "use subprocess_env() and a subprocess instead"
        )
    import sys

    pynvml = sys.modules.get("pynvml")
    held = getattr(pynvml, "nvmlLib", None)
    if held is not None and not hasattr(held, "fakeNvmlReset"):
        raise RuntimeError("pynvml already loaded a real NVML library in this process")
    return lib


def reset(lib_path: str | os.PathLike[str]) -> None:
    """Drop every nvmlInit reference the fake holds and forget the state it read."""
    ctypes.CDLL(str(lib_path)).fakeNvmlReset()


def gpm_samples_allocated(lib_path: str | os.PathLike[str]) -> int:
    """How many GPM samples the code under test allocated and has not freed."""
    return int(ctypes.CDLL(str(lib_path)).fakeNvmlGpmSamplesAllocated())


def subprocess_env(
    lib_path: str | os.PathLike[str],
    state_path: str | os.PathLike[str],
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """An environment in which a child process's pynvml loads the fake and reads ``state_path``."""
    env = dict(os.environ if base is None else base)
    lib_dir = str(Path(lib_path).resolve().parent)
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = f"{lib_dir}:{old}" if old else lib_dir
    env["FAKE_NVML_STATE"] = str(state_path)
    return env


def _check_text(value: str, what: str) -> str:
    value = str(value)
    if not value or "\n" in value or "\r" in value or value != value.strip():
        raise ValueError(f"{what} must be one line without surrounding spaces: {value!r}")
    return value


def _check_uint(value: int, what: str, bits: int = 32) -> int:
    if isinstance(value, bool) or int(value) != value or not 0 <= value < 2**bits:
        raise ValueError(f"{what} must be an integer in [0, 2**{bits}): {value!r}")
    return int(value)


_U32_FIELDS = (
    "util",
    "memory_util",
    "power_mw",
    "temperature",
    "minor",
    "pci_device_id",
    "retired_pages_pending",
    "gpm",
    "process_list_growth",
)
_U64_FIELDS = (
    "memory_total",
    "memory_used",
    "memory_reserved",
    "ecc_corrected",
    "ecc_uncorrected",
    "energy_mj",
)


class FakeNVML:
    """The simulated NVML state, written to ``state_path`` by :meth:`write`.

    Nothing reaches the library until :meth:`write` (or every change when
    ``autowrite=True``); before the first write there is no state file, which the
    library reports as "driver not loaded".
    """

    def __init__(
        self,
        state_path: str | os.PathLike[str],
        *,
        lib_path: str | os.PathLike[str] | None = None,
        driver: str = "550.54.15",
        cuda: int = 12040,
        autowrite: bool = False,
    ) -> None:
        self.state_path = Path(state_path)
        self.lib_path = Path(lib_path) if lib_path else None
        self.autowrite = autowrite
        self.driver = driver
        self.cuda = cuda
        self.nvml_version: str | None = None
        self.gpus: list[dict] = []
        self.processes: list[dict] = []  # {"gpu", "pid", "used_memory", "gpu_instance", ...}
        self.samples: list[tuple[int, int, int, int, int, int, int]] = []
        self.topology: dict[tuple[int, int], int] = {}
        self.generation = 0

    # --- system ---------------------------------------------------------------

    def set_driver(
        self, version: str, cuda: int | None = None, nvml_version: str | None = None
    ) -> None:
        """Driver version string, CUDA driver version (e.g. 12040) and NVML version."""
        self.driver = _check_text(version, "driver")
        if cuda is not None:
            self.cuda = int(cuda)
        if nvml_version is not None:
            self.nvml_version = _check_text(nvml_version, "nvml_version")
        self._changed()

    # --- GPUs -----------------------------------------------------------------

    def add_gpu(
        self,
        uuid: str | None = None,
        name: str = "NVIDIA H100 80GB HBM3",
        *,
        memory_total: int = H100_MEMORY,
        memory_used: int = 0,
        memory_reserved: int = 0,
        util: int = 0,
        memory_util: int = 0,
        power_mw: int = 70000,
        temperature: int = 30,
        pci: str | None = None,
        pci_device_id: int = 0x233010DE,
        minor: int | None = None,
        compute_capability: tuple[int, int] = (9, 0),
        ecc_corrected: int = 0,
        ecc_uncorrected: int = 0,
        retired_pages_pending: int = 0,
        energy_mj: int = 0,
        gpm: bool = False,
        sm_activity: float = 0.0,
    ) -> int:
        """Declare the next GPU; return its NVML index."""
        index = len(self.gpus)
        if index >= 64:
            raise ValueError("the fake supports at most 64 GPUs")
        self.gpus.append(
            {
                "uuid": "",
                "name": "",
                "pci": "",
                "compute_capability": (9, 0),
                "lost": False,
                "process_list_growth": 0,
                "unsupported": set(),
            }
        )
        self.set_gpu(
            index,
            # the xdist worker's number in the UUID: two workers' hubs on one Docker
            # engine would take each other's GPUs for held ("another hub's servers")
            uuid=uuid or f"GPU-fa4e{index:04x}-{_WORKER:04x}-4000-8000-{index:012x}",
            name=name,
            memory_total=memory_total,
            memory_used=memory_used,
            memory_reserved=memory_reserved,
            util=util,
            memory_util=memory_util,
            power_mw=power_mw,
            temperature=temperature,
            pci=pci or f"00000000:{0x17 + index:02X}:00.0",
            pci_device_id=pci_device_id,
            minor=index if minor is None else minor,
            compute_capability=compute_capability,
            ecc_corrected=ecc_corrected,
            ecc_uncorrected=ecc_uncorrected,
            retired_pages_pending=retired_pages_pending,
            energy_mj=energy_mj,
            gpm=gpm,
            sm_activity=sm_activity,
        )
        return index

    def set_gpu(self, index: int, **fields) -> None:
        """Set any of :meth:`add_gpu`'s fields on GPU ``index``."""
        gpu = self._gpu(index)
        for key, value in fields.items():
            if key in ("uuid", "name", "pci"):
                value = _check_text(value, key)
            elif key == "gpm":
                value = int(bool(value))
            elif key == "sm_activity":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"sm_activity must be a number (percent): {value!r}")
                value = float(value)
            elif key in _U32_FIELDS:
                value = _check_uint(value, key)
            elif key in _U64_FIELDS:
                value = _check_uint(value, key, 64)
            elif key == "compute_capability":
                value = tuple(_check_uint(v, key) for v in value)
            else:
                raise TypeError(f"unknown GPU field {key!r}")
            gpu[key] = value
        self._changed()

    def set_utilization(
        self, index: int, gpu: int | None = None, memory: int | None = None
    ) -> None:
        """nvmlDeviceGetUtilizationRates: ``gpu`` and ``memory`` percentages."""
        fields = {}
        if gpu is not None:
            fields["util"] = gpu
        if memory is not None:
            fields["memory_util"] = memory
        self.set_gpu(index, **fields)

    def set_memory(
        self,
        index: int,
        used: int | None = None,
        total: int | None = None,
        reserved: int | None = None,
    ) -> None:
        """Memory in bytes; ``free = total - used - reserved``."""
        fields = {
            k: v
            for k, v in (
                ("memory_used", used),
                ("memory_total", total),
                ("memory_reserved", reserved),
            )
            if v is not None
        }
        self.set_gpu(index, **fields)

    def set_power(self, index: int, milliwatts: int) -> None:
        self.set_gpu(index, power_mw=milliwatts)

    def set_temperature(self, index: int, celsius: int) -> None:
        self.set_gpu(index, temperature=celsius)

    def set_energy(self, index: int, millijoules: int) -> None:
        """The total-energy counter (mJ since the driver loaded); a lower value models a reset."""
        self.set_gpu(index, energy_mj=millijoules)

    def add_energy(self, index: int, millijoules: int) -> int:
        """Move the energy counter on by ``millijoules``; return the new value."""
        self.set_energy(index, self._gpu(index)["energy_mj"] + millijoules)
        return self._gpu(index)["energy_mj"]

    def set_gpm(self, index: int, supported: bool = True, sm_activity: float | None = None) -> None:
        """GPM (Hopper and later) on or off, and the SM activity (%) its metrics give."""
        fields: dict = {"gpm": supported}
        if sm_activity is not None:
            fields["sm_activity"] = sm_activity
        self.set_gpu(index, **fields)

    def set_sm_activity(self, index: int, percent: float) -> None:
        """What nvmlGpmMetricsGet gives for SM_UTIL between two later samples of this GPU."""
        self.set_gpu(index, sm_activity=percent)

    def set_lost(self, index: int, lost: bool = True) -> None:
        """Mark the GPU fallen off the bus (every call: GPU_IS_LOST), or recovered."""
        self._gpu(index)["lost"] = bool(lost)
        self._changed()

    def set_process_list_growth(self, index: int, count: int) -> None:
        """Let ``count`` processes appear on GPU ``index`` between a caller's two calls of
        ``nvmlDeviceGetComputeRunningProcesses`` (the count, then the list): more than
        pynvml's room (twice the count + 5) makes the list call INSUFFICIENT_SIZE, as a
        real driver's list that grew does. 0 (the default): the list stays as counted."""
        self.set_gpu(index, process_list_growth=count)

    def set_unsupported(self, index: int, call: str, unsupported: bool = True) -> None:
        """Make ``call`` (short name or NVML function name) return NOT_SUPPORTED on this GPU."""
        call = _check_text(call, "call")
        if " " in call:
            raise ValueError(f"one call name, no spaces: {call!r}")
        calls = self._gpu(index)["unsupported"]
        if unsupported:
            calls.add(call)
        else:
            calls.discard(call)
        self._changed()

    # --- processes and samples -------------------------------------------------

    def add_process(
        self,
        index: int,
        pid: int,
        used_memory: int | None = None,
        *,
        gpu_instance: int | None = None,
        compute_instance: int | None = None,
    ) -> None:
        """A running compute process (host PID) on GPU ``index``.

        ``used_memory=None`` is reported as not available (pynvml gives ``None``);
        instance ids default to 0xFFFFFFFF (not MIG), like the real driver.
        """
        self._gpu(index)

        def opt(value, what, bits=32):
            return None if value is None else _check_uint(value, what, bits)

        self.processes.append(
            {
                "gpu": index,
                "pid": _check_uint(pid, "pid"),
                "used_memory": opt(used_memory, "used_memory", 64),
                "gpu_instance": opt(gpu_instance, "gpu_instance"),
                "compute_instance": opt(compute_instance, "compute_instance"),
            }
        )
        self._changed()

    def remove_process(self, index: int, pid: int) -> None:
        self.processes = [p for p in self.processes if (p["gpu"], p["pid"]) != (index, pid)]
        self._changed()

    def clear_processes(self, index: int | None = None) -> None:
        self.processes = [p for p in self.processes if index is not None and p["gpu"] != index]
        self._changed()

    def add_sample(
        self,
        index: int,
        pid: int,
        timestamp_us: int,
        sm: int = 0,
        mem: int = 0,
        enc: int = 0,
        dec: int = 0,
    ) -> None:
        """A process utilization sample (nvmlDeviceGetProcessUtilization); time in µs."""
        self._gpu(index)
        utils = (_check_uint(v, "utilization") for v in (sm, mem, enc, dec))
        self.samples.append(
            (index, _check_uint(pid, "pid"), _check_uint(timestamp_us, "timestamp", 64), *utils)
        )
        self._changed()

    def clear_samples(self, index: int | None = None) -> None:
        self.samples = [s for s in self.samples if index is not None and s[0] != index]
        self._changed()

    def set_topology(self, a: int, b: int, level: int) -> None:
        """nvmlDeviceGetTopologyCommonAncestor level between two GPUs (both orders)."""
        self._gpu(a)
        self._gpu(b)
        self.topology[(min(a, b), max(a, b))] = _check_uint(level, "level")
        self._changed()

    # --- output ---------------------------------------------------------------

    def render(self) -> str:
        """The state file's text."""
        lines = [f"generation {self.generation}", f"driver {self.driver}", f"cuda {self.cuda}"]
        if self.nvml_version:
            lines.append(f"nvml_version {self.nvml_version}")
        for i, gpu in enumerate(self.gpus):
            for key in ("uuid", "name", "pci", *_U32_FIELDS, *_U64_FIELDS):
                lines.append(f"gpu {i} {key} {gpu[key]}")
            lines.append(f"gpu {i} sm_activity {gpu['sm_activity']!r}")
            major, minor = gpu["compute_capability"]
            lines.append(f"gpu {i} compute_capability {major}.{minor}")
            lines.append(f"gpu {i} lost {int(gpu['lost'])}")
            lines.extend(f"gpu {i} unsupported {call}" for call in sorted(gpu["unsupported"]))
        for p in self.processes:
            line = f"process {p['gpu']} {p['pid']}"
            for key in ("used_memory", "gpu_instance", "compute_instance"):
                if p[key] is not None:
                    line += f" {key} {p[key]}"
            lines.append(line)
        lines.extend("sample " + " ".join(map(str, s)) for s in self.samples)
        lines.extend(f"topology {a} {b} {level}" for (a, b), level in sorted(self.topology.items()))
        return "\n".join(lines) + "\n"

    def write(self) -> Path:
        """Atomically replace the state file; the library sees it on its next call.

        The new file is a new inode (and the generation line changes its content),
        so the change is seen even within the same mtime tick.
        """
        self.generation += 1
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".nvml-state-", dir=self.state_path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.render())
            os.replace(tmp, self.state_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return self.state_path

    def remove(self) -> None:
        """Delete the state file: the next first nvmlInit fails with DRIVER_NOT_LOADED."""
        self.state_path.unlink(missing_ok=True)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a subprocess that should see this fake (needs ``lib_path``)."""
        if self.lib_path is None:
            raise RuntimeError("FakeNVML was made without lib_path")
        return subprocess_env(self.lib_path, self.state_path, base)

    @property
    def uuids(self) -> list[str]:
        return [g["uuid"] for g in self.gpus]

    def _gpu(self, index: int) -> dict:
        if not (isinstance(index, int) and 0 <= index < len(self.gpus)):
            raise IndexError(f"no GPU {index!r}; add_gpu() first ({len(self.gpus)} declared)")
        return self.gpus[index]

    def _changed(self) -> None:
        if self.autowrite:
            self.write()
