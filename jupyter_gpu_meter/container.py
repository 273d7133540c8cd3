"""The last word on a notebook container's create request. Pure.

Every ``create_container`` call of the spawner passes through
:func:`enforce_create_kwargs`, after DockerSpawner and the admin's
``extra_create_kwargs``/``extra_host_config`` have had their say, so nothing
upstream can widen a container's GPU set or its privileges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from . import labels

#: variables that decide which GPUs a process sees; only the spawner sets them
GPU_VISIBILITY_ENV = (
    "NVIDIA_VISIBLE_DEVICES",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "NVIDIA_REQUIRE_CUDA",
    "NVIDIA_DISABLE_REQUIRE",
    "NVIDIA_MIG_CONFIG_DEVICES",
    "NVIDIA_MIG_MONITOR_DEVICES",
    "NVIDIA_IMEX_CHANNELS",
    "GPU_DEVICE_ORDINAL",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
)


@dataclass(frozen=True)
class Hardening:
    """Container settings that hold whatever the rest of the config says."""

    user: str = "1000:100"
    cap_add: Sequence[str] = ()
    pids_limit: int = 4096
    shm_size_bytes: int = 1024**3
    #: name -> soft and hard limit; NCCL wants unlimited locked memory and a 64 MiB stack
    ulimits: Mapping[str, int] = field(default_factory=lambda: {"memlock": -1, "stack": 67108864})


def gpu_environment(gpu_uuids: Sequence[str]) -> dict[str, str]:
    """What a container with exactly these GPUs must see (none: CPU only).

    ``void`` makes the NVIDIA runtime attach nothing even where it is Docker's
    default runtime and the image says ``all``; an empty
    ``CUDA_VISIBLE_DEVICES`` hides every device from CUDA.
    """
    if not gpu_uuids:
        return {"NVIDIA_VISIBLE_DEVICES": "void", "CUDA_VISIBLE_DEVICES": ""}
    ids = ",".join(gpu_uuids)
    return {
        "NVIDIA_VISIBLE_DEVICES": ids,
        "CUDA_VISIBLE_DEVICES": ids,
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
    }


def _is_gpu(device) -> bool:
    """A device mapping ("/dev/nvidia0:/dev/nvidia0:rwm" or docker-py's dict) of an NVIDIA node."""
    if isinstance(device, Mapping):
        path = device.get("PathOnHost", "")
    else:
        path = str(device).split(":")[0]
    return path.startswith("/dev/nvidia")


def _environment_dict(environment) -> dict[str, str]:
    if environment is None:
        return {}
    if isinstance(environment, Mapping):
        return dict(environment)
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)


def enforce_create_kwargs(
    create_kwargs: Mapping,
    *,
    gpu_uuids: Sequence[str],
    container_labels: Mapping[str, str],
    hardening: Hardening,
) -> dict:
    """A copy of docker-py ``create_container`` kwargs with GPUs, labels and limits enforced."""
    kwargs = dict(create_kwargs)
    env = {
        key: value
        for key, value in _environment_dict(kwargs.get("environment")).items()
        if key not in GPU_VISIBILITY_ENV
    }
    env.update(gpu_environment(gpu_uuids))
    kwargs["environment"] = env
    kwargs["labels"] = {**dict(kwargs.get("labels") or {}), **container_labels}
    kwargs["user"] = hardening.user

    host = dict(kwargs.get("host_config") or {})
    host["Privileged"] = False  # a privileged container sees every device
    host["Devices"] = [device for device in host.get("Devices") or [] if not _is_gpu(device)]
    if gpu_uuids:
        host["DeviceRequests"] = [
            {
                "Driver": "nvidia",
                "Count": 0,
                "DeviceIDs": list(gpu_uuids),
                "Capabilities": [["gpu"]],
                "Options": {},
            }
        ]
    else:
        host.pop("DeviceRequests", None)
    host["CapDrop"] = ["ALL"]
    host["CapAdd"] = list(hardening.cap_add)
    host["SecurityOpt"] = [
        *(opt for opt in host.get("SecurityOpt") or [] if not opt.startswith("no-new-privileges")),
        "no-new-privileges:true",
    ]
    host["PidsLimit"] = hardening.pids_limit
    host["ShmSize"] = hardening.shm_size_bytes
    ulimits = {
        limit["Name"]: limit for limit in host.get("Ulimits") or [] if isinstance(limit, Mapping)
    }
    for name, value in hardening.ulimits.items():
        ulimits[name] = {"Name": name, "Soft": value, "Hard": value}
    host["Ulimits"] = list(ulimits.values())
    kwargs["host_config"] = host
    return kwargs


def container_labels(
    *,
    user: str,
    server: str,
    gpu_uuids: Sequence[str],
    gpu_model: str | None,
    profile: str,
    hub_id: str,
) -> dict[str, str]:
    return {
        labels.MANAGED: "1",
        labels.HUB: hub_id,
        labels.USER: user,
        labels.SERVER: server,
        labels.GPUS: ",".join(gpu_uuids),
        labels.GPU_MODEL: gpu_model or "",
        labels.PROFILE: profile,
    }
