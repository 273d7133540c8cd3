"""jupyter_gpu_meter: pay-per-use GPU notebooks for JupyterHub."""

from ._version import __version__
from .allocation import NoFreeGPUs, choose_gpus
from .choice import Choice, ChoiceError, Profile
from .gpus import GPU, GPUInventory, Inventory
from .spawner import GPUDockerSpawner

__all__ = [
    "GPU",
    "Choice",
    "ChoiceError",
    "GPUDockerSpawner",
    "GPUInventory",
    "Inventory",
    "NoFreeGPUs",
    "Profile",
    "__version__",
    "choose_gpus",
]
