"""The last word on a notebook container's create request. Pure.

Every ``create_container`` call of the spawner passes through
:func:`enforce_create_kwargs`, after DockerSpawner and the admin's
``extra_create_kwargs``/``extra_host_config`` have had their say, so nothing
upstream can widen a container's GPU set or its privileges. What would let a
notebook reach the host or another user's container (host namespaces,
unconfined security options, host devices, binds of system paths or of the
Docker socket) is refused with :class:`ContainerRefused` unless the admin
allowed it by one of the names in :data:`UNSAFE_SETTINGS`.
"""

from __future__ import annotations

import posixpath
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

#: "1" where SSH is on for the server (the image starts its sshd), "0" where off; = label SSH
SSH_ENV = "JUPYTER_GPU_METER_SSH"

#: what an admin may allow by name (``GPUDockerSpawner.allow_unsafe_settings``) -> what it lets in
UNSAFE_SETTINGS = {
    "pid_mode": "the host's or another container's processes",
    "ipc_mode": "the host's or another container's IPC namespace",
    "userns_mode": "the host's user namespace",
    "uts_mode": "the host's UTS namespace",
    "cgroupns_mode": "the host's cgroup namespace",
    "network_mode": "another container's network",
    "security_opt": "security options that turn confinement off",
    "device_cgroup_rules": "device cgroup rules",
    "devices": "host devices",
    "volumes_from": "another container's volumes",
    "system_paths": "a bind of the host's /, /dev, /proc or /sys",
    "docker_engine": "a bind of the Docker engine's socket or data",
}


class ContainerRefused(ValueError):
    """A create request or setting that would give a notebook too much; the message says why."""


@dataclass(frozen=True)
class Hardening:
    """Container settings that hold whatever the rest of the config says."""

    user: str = "1000:100"
    cap_add: Sequence[str] = ()
    pids_limit: int = 4096
    shm_size_bytes: int = 1024**3
    #: name -> soft and hard limit; NCCL wants a 64 MiB stack and unlimited locked memory,
    #: which only some engines grant: the spawner adds ``memlock`` at the most its engine
    #: grants (:mod:`~jupyter_gpu_meter.ulimits`); without it, a container has the engine's
    ulimits: Mapping[str, int] = field(default_factory=lambda: {"stack": 67108864})
    #: names from UNSAFE_SETTINGS the admin allows
    allow_unsafe: frozenset[str] = frozenset()
    #: named volumes that may be mounted read-only only (the datasets'), whoever asks
    read_only_volumes: frozenset[str] = frozenset()


def check_container_user(user: str) -> str:
    """The user unchanged, or :class:`ContainerRefused` if Docker would run it as root.

    Docker (runc) takes ``user[:group]``; a user part that parses as a number
    is a uid, so ``"00"``, ``"+0"``, ``"-0"`` and ``"0:0"`` are root, and an
    empty one (``""``, ``":100"``) is the image's own user, root in most
    images. Spaces are stripped before the check. A group of 0 is allowed:
    it is not root's privileges. Another name that the image maps to uid 0
    cannot be known without the image: use a numeric uid.
    """
    name = str(user).split(":", 1)[0].strip()
    try:
        root = int(name) == 0
    except ValueError:
        root = name in ("", "root")
    if root:
        raise ContainerRefused(
            f"container_user {user!r} would run notebooks as root; "
            "use a non-root numeric uid:gid such as '1000:100'"
        )
    return user


def check_allowed_names(names) -> frozenset[str]:
    """The names as a frozenset, or ValueError naming the ones that are not in UNSAFE_SETTINGS."""
    if isinstance(names, str):
        names = {names}
    unknown = sorted(str(name) for name in names if name not in UNSAFE_SETTINGS)
    if unknown:
        raise ValueError(
            f"allow_unsafe_settings: unknown name(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(UNSAFE_SETTINGS))}"
        )
    return frozenset(names)


# --- what in a create request needs an admin's opt-in ----------------------

#: HostConfig keys this module reads or sets. Docker decodes JSON field names
#: case-insensitively, so "pidmode" would be PidMode: other spellings are folded into these.
_HOST_KEYS = (
    "Privileged",
    "Devices",
    "DeviceRequests",
    "DeviceCgroupRules",
    "CapAdd",
    "CapDrop",
    "SecurityOpt",
    "MaskedPaths",
    "ReadonlyPaths",
    "PidsLimit",
    "ShmSize",
    "Ulimits",
    "PidMode",
    "IpcMode",
    "UsernsMode",
    "UTSMode",
    "CgroupnsMode",
    "NetworkMode",
    "Binds",
    "Mounts",
    "VolumesFrom",
)
_CANONICAL = {key.lower(): key for key in _HOST_KEYS}

#: folders whose binds expose the host's devices, processes or kernel
_SYSTEM_TREES = ("/dev", "/proc", "/sys")
#: sockets that control the container engine, and where their folders are
_ENGINE_SOCKETS = ("docker.sock", "containerd.sock")
_ENGINE_SOCKET_PATHS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
)
_ENGINE_TREES = ("/var/lib/docker", "/var/lib/containerd")

#: SecurityOpt key -> values that turn that confinement off
_UNCONFINED = {
    "seccomp": ("unconfined",),
    "apparmor": ("unconfined",),
    "label": ("disable", "type:spc_t", "type:unconfined_t"),
    "systempaths": ("unconfined",),
    "writable-cgroups": ("true",),
}


def _canonical_host_config(host_config: Mapping) -> dict:
    """The host config with the keys this module knows spelled as Docker's API spells them."""
    host = {}
    for key, value in host_config.items():
        name = _CANONICAL.get(str(key).lower(), key)
        if name in host:
            raise ContainerRefused(
                f"host_config sets {name} twice (as {name!r} and {key!r}); keep one spelling"
            )
        host[name] = value
    return host


def _get(mapping: Mapping, key: str, default=None):
    """mapping[key], with Docker's case-insensitive reading of JSON field names."""
    for found, value in mapping.items():
        if str(found).lower() == key.lower():
            return value
    return default


def _clean_path(path: str) -> str:
    """A host path as written, cleaned lexically: "//var/run/../run/" -> "/var/run"."""
    cleaned = posixpath.normpath(str(path).strip())
    return "/" + cleaned.lstrip("/") if cleaned.startswith("/") else cleaned


def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def host_path_problems(path: str) -> list[str]:
    """The UNSAFE_SETTINGS names a bind of this host path needs (none for a named volume)."""
    path = _clean_path(path)
    if not path.startswith("/"):
        return []  # a named volume, not a host path
    names = []
    if path == "/" or any(_under(path, tree) for tree in _SYSTEM_TREES):
        names.append("system_paths")
    if (
        posixpath.basename(path) in _ENGINE_SOCKETS
        or any(_under(socket, path) for socket in _ENGINE_SOCKET_PATHS)
        or any(_under(path, tree) for tree in _ENGINE_TREES)
    ):
        names.append("docker_engine")
    return names


def _bind_sources(host: Mapping) -> list[str]:
    """Every host path the container would see: Binds ("src:dst[:mode]") and Mounts."""
    sources = [str(bind).split(":", 1)[0] for bind in host.get("Binds") or []]
    for mount in host.get("Mounts") or []:
        if not isinstance(mount, Mapping):
            continue
        if str(_get(mount, "Type", "")).lower() == "bind":
            sources.append(str(_get(mount, "Source", "")))
        # a local volume can bind a host folder too: type=none, o=bind, device=<path>
        options = _get(_get(_get(mount, "VolumeOptions") or {}, "DriverConfig") or {}, "Options")
        device = _get(options or {}, "device")
        if device:
            sources.append(str(device))
    return sources


def _security_opt_problems(host: Mapping) -> list[str]:
    found = []
    for option in host.get("SecurityOpt") or []:
        text = str(option).strip()
        # Docker splits "key=value", and the older "key:value" where there is no "="
        key, _, value = text.partition("=") if "=" in text else text.partition(":")
        if value.strip().lower() in _UNCONFINED.get(key.strip().lower(), ()):
            found.append(text)
    for key in ("MaskedPaths", "ReadonlyPaths"):
        if host.get(key) is not None:
            found.append(key)
    return found


def unsafe_settings(host_config: Mapping) -> dict[str, list[str]]:
    """UNSAFE_SETTINGS name -> what in this (Docker API) host config needs it.

    Empty when nothing does. GPU device nodes are not counted: the spawner
    drops them and attaches its own GPUs.
    """
    host = _canonical_host_config(host_config)
    found: dict[str, list[str]] = {}

    def add(name, what):
        found.setdefault(name, []).append(str(what))

    for key, name, safe in (
        ("PidMode", "pid_mode", ("", "private")),
        ("IpcMode", "ipc_mode", ("", "private", "shareable", "none")),
        ("UsernsMode", "userns_mode", ("",)),
        ("UTSMode", "uts_mode", ("",)),
        ("CgroupnsMode", "cgroupns_mode", ("", "private")),
    ):
        value = str(host.get(key) or "")
        if value.strip().lower() not in safe:
            add(name, f"{key}={value}")
    network = str(host.get("NetworkMode") or "")
    if network.strip().lower().startswith("container:"):
        add("network_mode", f"NetworkMode={network}")
    for option in _security_opt_problems(host):
        add("security_opt", option)
    for rule in host.get("DeviceCgroupRules") or []:
        add("device_cgroup_rules", rule)
    for device in host.get("Devices") or []:
        if not _is_gpu(device):
            add("devices", _get(device, "PathOnHost") if isinstance(device, Mapping) else device)
    for other in host.get("VolumesFrom") or []:
        add("volumes_from", other)
    for source in _bind_sources(host):
        for name in host_path_problems(source):
            add(name, source)
    return found


def refuse_unsafe(host_config: Mapping, allowed: frozenset[str] = frozenset()) -> None:
    """:class:`ContainerRefused` naming what needs an opt-in that ``allowed`` does not give."""
    refused = {
        name: what for name, what in unsafe_settings(host_config).items() if name not in allowed
    }
    if refused:
        parts = "; ".join(
            f"{UNSAFE_SETTINGS[name]} ({', '.join(what)}) [{name}]"
            for name, what in sorted(refused.items())
        )
        raise ContainerRefused(
            f"this server's container is refused: it would get {parts}. These reach the host "
            "or other users' containers; an admin must remove them from the configuration, or "
            "allow them by the names in brackets in c.GPUDockerSpawner.allow_unsafe_settings "
            "(single-tenant hosts only)"
        )


def writable_mounts(host_config: Mapping, volumes: frozenset[str]) -> list[str]:
    """ "<volume> at <target>" for each mount of one of `volumes` that is not read-only."""
    host = _canonical_host_config(host_config)
    found = []
    for bind in host.get("Binds") or []:
        source, _, rest = str(bind).partition(":")
        target, _, mode = rest.partition(":")
        if source in volumes and "ro" not in mode.split(","):
            found.append(f"{source} at {target}")
    for mount in host.get("Mounts") or []:
        if not isinstance(mount, Mapping):
            continue
        source = str(_get(mount, "Source", ""))
        if source in volumes and _get(mount, "ReadOnly") is not True:
            found.append(f"{source} at {_get(mount, 'Target', '?')}")
    return found


def refuse_writable(host_config: Mapping, volumes: frozenset[str]) -> None:
    """:class:`ContainerRefused` if one of `volumes` would be mounted writable."""
    found = writable_mounts(host_config, volumes)
    if found:
        raise ContainerRefused(
            f"this server's container is refused: it would mount {', '.join(found)} writable; "
            "those volumes (datasets) are shared by every user and are mounted read-only only: "
            "remove them from c.DockerSpawner.volumes, mounts or extra_host_config, or mount "
            "them with ':ro'"
        )


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
        path = _get(device, "PathOnHost", "")
    else:
        path = str(device).split(":")[0]
    return _clean_path(path).startswith("/dev/nvidia")


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
    """A copy of docker-py ``create_container`` kwargs with GPUs, labels and limits enforced.

    :class:`ContainerRefused` if the user is root, if the host config asks
    for something in :data:`UNSAFE_SETTINGS` that ``hardening.allow_unsafe``
    does not name, or if it mounts one of ``hardening.read_only_volumes``
    writable.
    """
    check_container_user(hardening.user)
    kwargs = dict(create_kwargs)
    env = {
        key: value
        for key, value in _environment_dict(kwargs.get("environment")).items()
        if key not in GPU_VISIBILITY_ENV
    }
    env.update(gpu_environment(gpu_uuids))
    if labels.SSH in container_labels:  # sshd starts on the variable, keys follow the label
        env[SSH_ENV] = container_labels[labels.SSH]
    kwargs["environment"] = env
    kwargs["labels"] = {**dict(kwargs.get("labels") or {}), **container_labels}
    kwargs["user"] = hardening.user

    host = _canonical_host_config(kwargs.get("host_config") or {})
    host["Privileged"] = False  # a privileged container sees every device
    host["Devices"] = [device for device in host.get("Devices") or [] if not _is_gpu(device)]
    refuse_unsafe(host, hardening.allow_unsafe)
    refuse_writable(host, hardening.read_only_volumes)
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
    image: str = "",
    ssh: bool = False,
) -> dict[str, str]:
    return {
        labels.MANAGED: "1",
        labels.HUB: hub_id,
        labels.USER: user,
        labels.SERVER: server,
        labels.GPUS: ",".join(gpu_uuids),
        labels.GPU_MODEL: gpu_model or "",
        labels.PROFILE: profile,
        labels.IMAGE: image,
        labels.SSH: "1" if ssh else "0",
    }
