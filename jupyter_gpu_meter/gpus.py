"""GPU inventory: which GPUs this machine has, and whether they are healthy.

Three sources, one result (:class:`Inventory`):

- NVML (the NVIDIA driver's management library, through nvidia-ml-py),
- simulated GPUs, for machines without an NVIDIA driver (demo, tests),
- a static list, for a hub that does not see the GPUs itself.
"""

from __future__ import annotations

import os
import re
import threading
import uuid as uuidlib
from dataclasses import dataclass, field

from traitlets import Dict, List, Unicode, default, validate
from traitlets.config import LoggingConfigurable

SIMULATED_ENV = "JUPYTER_GPU_METER_SIMULATED_GPUS"
SIMULATED_HOST_ENV = "JUPYTER_GPU_METER_SIMULATED_HOST"
SIMULATED_DEFAULT_MODEL = "Simulated GPU"
_SIMULATED_NAMESPACE = uuidlib.UUID("6f1c1a52-3b8e-4c33-9d0b-8d1f5f0a2e11")

# NVML topology levels (nvmlGpuTopologyLevel_t): lower is closer.
TOPOLOGY_SYSTEM = 50


@dataclass(frozen=True)
class GPU:
    """One whole GPU."""

    uuid: str
    index: int
    model: str
    memory_total_bytes: int = 0
    healthy: bool = True
    #: why the GPU is unhealthy, empty when healthy
    problem: str = ""


@dataclass(frozen=True)
class Inventory:
    """The GPUs of one machine, with the interconnect between them when known."""

    gpus: tuple[GPU, ...] = ()
    #: NVML common-ancestor level per unordered pair of UUIDs (lower is closer)
    topology: dict[frozenset, int] = field(default_factory=dict)
    #: the NVIDIA driver version, "" when unknown (simulated, static)
    driver_version: str = ""
    #: where the list came from: "nvml", "simulated", "static" or "none"
    source: str = "none"

    @property
    def models(self) -> list[str]:
        """The GPU models present, in inventory order, each once."""
        return list(dict.fromkeys(gpu.model for gpu in self.gpus))

    def by_uuid(self, uuid: str) -> GPU | None:
        return next((gpu for gpu in self.gpus if gpu.uuid == uuid), None)


def _memory_from_name(model: str) -> int:
    """80 GiB for "NVIDIA H100 80GB HBM3"; 16 GiB when the name says nothing."""
    match = re.search(r"(\d+)\s*GB", model)
    return int(match.group(1) if match else 16) * 1024**3


def simulated_uuid(index: int, model: str, host: str = "") -> str:
    """The UUID of simulated GPU `index` of `model` on `host` ("" on a one-host setup)."""
    name = f"{host}/{index}:{model}" if host else f"{index}:{model}"
    return "GPU-" + str(uuidlib.uuid5(_SIMULATED_NAMESPACE, name))


def parse_simulated(spec: str, host: str = "") -> tuple[GPU, ...]:
    """GPUs from a simulated-GPU spec.

    The spec is a comma-separated list of groups; each group is a count
    (``4``), a count and a model (``2xNVIDIA H100 80GB HBM3``) or a model
    (one GPU). UUIDs are derived from host, position and model, so the same
    spec gives the same UUIDs after a restart, and two hosts (cluster nodes)
    with the same spec have different GPUs. ``host=""`` gives the UUIDs of
    a one-host setup.
    """
    gpus = []
    for group in spec.split(","):
        group = group.strip()
        if not group:
            continue
        match = re.fullmatch(r"(\d+)(?:\s*[xX]\s*(.+))?", group)
        if match:
            count, model = int(match.group(1)), (match.group(2) or SIMULATED_DEFAULT_MODEL)
        elif not group[0].isalpha():
            raise ValueError(_simulated_help(spec))
        else:
            count, model = 1, group
        model = model.strip()
        if count < 1 or count > 1024:
            raise ValueError(_simulated_help(spec))
        for _ in range(count):
            index = len(gpus)
            uuid = simulated_uuid(index, model, host)
            gpus.append(GPU(uuid, index, model, _memory_from_name(model)))
    return tuple(gpus)


def _simulated_help(spec: str) -> str:
    return (
        f"invalid simulated GPU spec {spec!r}: use a count ('4'), a count and a model "
        "('2xNVIDIA H100 80GB HBM3'), or several of those separated by commas"
    )


def nvml_inventory(pynvml) -> Inventory:
    """Read the GPUs through NVML. Blocking: call it off the event loop.

    A GPU that fails to answer (lost, or any NVML error) is listed as unhealthy
    rather than left out, so that it is never handed out and an admin sees it.
    """
    pynvml.nvmlInit()
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus, handles = [], {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
                name = pynvml.nvmlDeviceGetName(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            except pynvml.NVMLError as e:
                gpus.append(GPU(f"unknown-index-{index}", index, "unknown", 0, False, str(e)))
                continue
            gpus.append(GPU(uuid, index, name, memory))
            handles[uuid] = handle
        topology = {}
        uuids = list(handles)
        for i, a in enumerate(uuids):
            for b in uuids[i + 1 :]:
                try:
                    level = pynvml.nvmlDeviceGetTopologyCommonAncestor(handles[a], handles[b])
                except pynvml.NVMLError:
                    continue
                topology[frozenset((a, b))] = int(level)
        return Inventory(tuple(gpus), topology, driver, "nvml")
    finally:
        pynvml.nvmlShutdown()


class GPUInventory(LoggingConfigurable):
    """Where the GPU list comes from; shared by the spawner and the meter service.

    Precedence: simulated GPUs if set, else the static list if set, else NVML.
    """

    simulated = Unicode(
        "",
        help=f"""
        Simulated GPUs, for machines without an NVIDIA driver (demo, tests).

        A count (``"4"``), a count and a model (``"2xNVIDIA H100 80GB HBM3"``),
        or several groups separated by commas
        (``"2xNVIDIA H100 80GB HBM3,1xNVIDIA L4"``). Empty: no simulation.
        Defaults to the environment variable ``{SIMULATED_ENV}``.
        The Docker engine still receives real device requests for these
        GPUs, so it needs a GPU runtime hook (or the test stand-in).
        """,
    ).tag(config=True)

    @default("simulated")
    def _simulated_from_env(self):
        return os.environ.get(SIMULATED_ENV, "")

    @validate("simulated")
    def _check_simulated(self, proposal):
        parse_simulated(proposal.value)  # raises ValueError with the accepted forms
        return proposal.value

    simulated_host = Unicode(
        "",
        help=f"""
        The node the simulated GPUs belong to, for a cluster of simulated
        nodes (tests, demo): each node's GPUs get UUIDs of their own, derived
        from this name, e.g. ``"gpu-node-1"``. Set it to the node's Docker
        engine name (``docker info --format '{{{{.Name}}}}'``), the name the
        node advertises its ``NVIDIA-GPU`` resources under. Empty (one host):
        the UUIDs do not depend on the host, as before.
        Defaults to the environment variable ``{SIMULATED_HOST_ENV}``.
        """,
    ).tag(config=True)

    @default("simulated_host")
    def _simulated_host_from_env(self):
        return os.environ.get(SIMULATED_HOST_ENV, "")

    @validate("simulated_host")
    def _check_simulated_host(self, proposal):
        host = proposal.value
        if host != host.strip() or any(c in host for c in "/=,\n"):
            raise ValueError(
                f"simulated_host {host!r}: use a node name without spaces at either end "
                "and without '/', '=', ',' or newlines (e.g. 'gpu-node-1')"
            )
        return host

    static = List(
        Dict(),
        help="""
        A fixed GPU list, for a hub that cannot see the GPUs itself
        (the hub in a container without the driver, say).

        Each entry is a dict with ``uuid`` and ``model`` (required) and
        optionally ``index``, ``memory_total_bytes`` and ``healthy``, e.g.
        ``[{"uuid": "GPU-8f3e...", "model": "NVIDIA H100 80GB HBM3"}]``.
        """,
    ).tag(config=True)

    @validate("static")
    def _check_static(self, proposal):
        allowed = {"uuid", "model", "index", "memory_total_bytes", "healthy"}
        for position, entry in enumerate(proposal.value):
            unknown = set(entry) - allowed
            missing = {"uuid", "model"} - set(entry)
            if unknown or missing:
                raise ValueError(
                    f"static GPU #{position} {entry!r}: needs 'uuid' and 'model', "
                    f"may have {', '.join(sorted(allowed - {'uuid', 'model'}))}"
                )
        return proposal.value

    _lock = threading.Lock()

    def discover(self) -> Inventory:
        """The current inventory. Blocking (NVML): call it off the event loop."""
        if self.simulated:
            gpus = parse_simulated(self.simulated, self.simulated_host)
            return Inventory(gpus, source="simulated")
        if self.static:
            gpus = tuple(
                GPU(
                    uuid=entry["uuid"],
                    index=int(entry.get("index", position)),
                    model=entry["model"],
                    memory_total_bytes=int(entry.get("memory_total_bytes", 0)),
                    healthy=bool(entry.get("healthy", True)),
                    problem="" if entry.get("healthy", True) else "marked unhealthy in config",
                )
                for position, entry in enumerate(self.static)
            )
            return Inventory(gpus, source="static")
        try:
            import pynvml
        except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
            self.log.warning("nvidia-ml-py is not installed: no GPUs")
            return Inventory()
        with self._lock:  # nvmlInit/nvmlShutdown are reference counted per process
            try:
                return nvml_inventory(pynvml)
            except pynvml.NVMLError as e:
                self.log.warning(
                    "NVML is not available (%s): no GPUs on this machine (right for a "
                    "CPU-only node; to try the product without a GPU, set "
                    "c.GPUInventory.simulated)",
                    e,
                )
                return Inventory()


#: the oldest Linux driver branch each CUDA major version runs on
MIN_DRIVER_FOR_CUDA = {11: 450, 12: 525, 13: 580}


def cuda_driver_problem(cuda_version: str, driver_version: str) -> str:
    """Why an image built for `cuda_version` cannot run on `driver_version`; "" if it can.

    Unknown versions (an image without the label, a simulated GPU) are not refused.
    """
    try:
        cuda_major = int(cuda_version.split(".")[0])
        driver_major = int(driver_version.split(".")[0])
    except ValueError:
        return ""
    needed = MIN_DRIVER_FOR_CUDA.get(cuda_major)
    if needed is None or driver_major >= needed:
        return ""
    return (
        f"built for CUDA {cuda_version}, which needs an NVIDIA driver >= {needed}; "
        f"this host has {driver_version}. Upgrade the driver or use an image for an older CUDA."
    )
