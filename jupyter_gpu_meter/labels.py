"""Container labels: how a container says which user, server and GPUs it holds.

The labels on running containers are the source of truth for "which GPU is
taken": after a hub restart the allocation is read back from Docker.
"""

PREFIX = "jupyter-gpu-meter."

#: present (value "1") on every container the GPU spawner creates
MANAGED = PREFIX + "managed"
USER = PREFIX + "user"
SERVER = PREFIX + "server"
#: comma-separated GPU UUIDs, empty for a CPU-only server
GPUS = PREFIX + "gpus"
GPU_MODEL = PREFIX + "gpu-model"
#: how many GPUs the server asked for (set on Swarm containers, whose UUIDs Swarm picks)
GPU_COUNT = PREFIX + "gpu-count"
PROFILE = PREFIX + "profile"
#: the display name of the image the user chose (an ``allowed_images`` key), or its reference
IMAGE = PREFIX + "image"
#: the id of the hub whose spawner made the container: each hub's meter meters only its own
HUB = PREFIX + "hub"
#: "1": SSH is on for this server (sshd behind the server's proxy), "0": off
SSH = PREFIX + "ssh"
#: on the notebook image: the CUDA version its PyTorch was built for
CUDA_VERSION = PREFIX + "cuda-version"

#: the environment variable Docker Swarm sets in a task's container to the UUIDs of the
#: ``NVIDIA-GPU`` generic resources it assigned (comma-separated)
SWARM_GPUS_ENV = "DOCKER_RESOURCE_NVIDIA-GPU"


def gpus_from_labels(labels):
    """The GPU UUIDs a container's labels say it holds."""
    value = (labels or {}).get(GPUS, "")
    return [uuid for uuid in value.split(",") if uuid]


def gpus_of_container(labels, env) -> list[str]:
    """The GPU UUIDs a container holds: its `gpus` label when not empty, else (a Swarm
    task, whose GPUs Swarm picked after the labels were written) the UUIDs in its
    environment's ``DOCKER_RESOURCE_NVIDIA-GPU``. Pure.

    `env` is Docker's ``Config.Env`` (a list of ``"NAME=value"``), a mapping, or None.
    """
    found = gpus_from_labels(labels)
    if found:
        return found
    if isinstance(env, dict):
        value = env.get(SWARM_GPUS_ENV, "")
    else:
        prefix = SWARM_GPUS_ENV + "="
        value = next((item[len(prefix) :] for item in env or () if item.startswith(prefix)), "")
    return [uuid.strip() for uuid in value.split(",") if uuid.strip()]


def of_hub(labels, hub_id: str) -> bool:
    """Whether a container with these labels belongs to the hub `hub_id`.

    Containers made before containers carried their hub (no label) belong to
    every hub: metering them twice during an upgrade beats leaving a running
    GPU server unmetered.
    """
    found = (labels or {}).get(HUB)
    return found is None or found == hub_id
