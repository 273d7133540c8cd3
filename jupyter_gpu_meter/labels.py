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
PROFILE = PREFIX + "profile"
#: the display name of the image the user chose (an ``allowed_images`` key), or its reference
IMAGE = PREFIX + "image"
#: the id of the hub whose spawner made the container: each hub's meter meters only its own
HUB = PREFIX + "hub"
#: "1": SSH is on for this server (sshd behind the server's proxy), "0": off
SSH = PREFIX + "ssh"
#: on the notebook image: the CUDA version its PyTorch was built for
CUDA_VERSION = PREFIX + "cuda-version"


def gpus_from_labels(labels):
    """The GPU UUIDs a container's labels say it holds."""
    value = (labels or {}).get(GPUS, "")
    return [uuid for uuid in value.split(",") if uuid]


def of_hub(labels, hub_id: str) -> bool:
    """Whether a container with these labels belongs to the hub `hub_id`.

    Containers made before containers carried their hub (no label) belong to
    every hub: metering them twice during an upgrade beats leaving a running
    GPU server unmetered.
    """
    found = (labels or {}).get(HUB)
    return found is None or found == hub_id
