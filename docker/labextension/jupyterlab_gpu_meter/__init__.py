"""jupyterlab-gpu-meter: jupyter_gpu_meter inside JupyterLab.

A Jupyter server extension (routes under ``<base_url>gpu-meter/``) plus a
prebuilt JupyterLab 4 frontend (``share/jupyter/labextensions/jupyterlab-gpu-meter``).
Installing the wheel enables both: the server extension through
``etc/jupyter/jupyter_server_config.d/jupyterlab_gpu_meter.json``.
"""

from __future__ import annotations

from . import ssh_activity, status, templates

__version__ = "0.1.0"
__all__ = ["__version__"]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyterlab-gpu-meter"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "jupyterlab_gpu_meter"}]


def _load_jupyter_server_extension(serverapp) -> None:
    """Add the extension's handlers to the server (one module per route group)."""
    status.setup(serverapp)
    templates.setup(serverapp)
    ssh_activity.setup(serverapp)


# Jupyter Server 1 / notebook spelling, for tools that still look for it.
load_jupyter_server_extension = _load_jupyter_server_extension
