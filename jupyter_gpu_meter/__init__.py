"""jupyter_gpu_meter: pay-per-use GPU notebooks for JupyterHub.

The public names below are imported on first use (PEP 562), so that
``python -m jupyter_gpu_meter.ssh_proxy`` — the SSH client, which runs for
every ``ssh``/``scp`` on a user's laptop — does not import JupyterHub and the
spawner first (1.1 s per connection otherwise).
"""

from importlib import import_module as _import_module

from ._version import __version__

#: public name -> the module that defines it
_PUBLIC = {
    "GPU": ".gpus",
    "Choice": ".choice",
    "ChoiceError": ".choice",
    "GPUDockerSpawner": ".spawner",
    "GPUSwarmSpawner": ".swarm",
    "GPUInventory": ".gpus",
    "Inventory": ".gpus",
    "NoFreeGPUs": ".allocation",
    "Profile": ".choice",
    "choose_gpus": ".allocation",
}

__all__ = [  # noqa: F822 (the names come from __getattr__)
    "GPU",
    "Choice",
    "ChoiceError",
    "GPUDockerSpawner",
    "GPUInventory",
    "GPUSwarmSpawner",
    "Inventory",
    "NoFreeGPUs",
    "Profile",
    "__version__",
    "choose_gpus",
]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(_import_module(_PUBLIC[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_PUBLIC})
