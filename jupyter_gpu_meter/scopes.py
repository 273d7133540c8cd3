"""The hub scopes the meter defines and asks for, by name.

Shared by the hub's configuration (:mod:`jupyter_gpu_meter.hubconfig`, which runs
in the hub process) and the meter service, so the hub side never imports the
service to learn a scope's name.
"""

from __future__ import annotations

#: the custom scope that lets its holders see every user's usage (pages, API, CSV)
READ_ALL_SCOPE = "custom:gpu-meter:read-all"
READ_ALL_DESCRIPTION = "Read every user's GPU usage and charges in the gpu-meter service."
#: the custom scope that lets its holders set, grant and remove budgets
BUDGETS_SCOPE = "custom:gpu-meter:budgets"
BUDGETS_DESCRIPTION = "Set, grant and remove GPU budgets in the gpu-meter service."
#: what the meter needs to stop a user's server (and nothing else of ``servers``)
STOP_SCOPE = "delete:servers"


def access_scope(service_name: str) -> str:
    """The scope that lets its holders use the service named `service_name` at all."""
    return f"access:services!service={service_name}"
