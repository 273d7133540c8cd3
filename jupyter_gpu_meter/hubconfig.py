"""Helpers for ``jupyterhub_config.py``: register the meter as a managed hub service."""

from __future__ import annotations

import os
import sys

from .gpus import SIMULATED_ENV
from .sampler import SIMULATED_UTILIZATION_ENV
from .service.app import DB_URL_ENV

#: the service's name, and so its URL prefix: /services/gpu-meter/
SERVICE_NAME = "gpu-meter"
#: variables the hub passes on to the meter (a managed service gets a minimal environment)
PASS_ENV = (
    SIMULATED_ENV,
    SIMULATED_UTILIZATION_ENV,
    DB_URL_ENV,
    "DOCKER_HOST",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "LD_LIBRARY_PATH",
)


#: what the meter may do on the hub's API, and why (least privilege)
METER_SCOPES = {
    "servers": "stop a server that a policy (GPU idle, max age, budget) ends",
    "users:activity": "report activity while a server's GPUs are busy (keep-alive)",
    "read:users:groups": "find a user's group budgets",
}


def meter_role() -> dict:
    """The ``c.JupyterHub.load_roles`` entry that gives the meter its scopes."""
    return {
        "name": "gpu-meter",
        "description": "The gpu-meter service: " + "; ".join(METER_SCOPES.values()),
        "scopes": sorted(METER_SCOPES),
        "services": [SERVICE_NAME],
    }


def meter_service(
    config_file: str, *, url: str = "http://127.0.0.1:10101", environment: dict | None = None
) -> dict:
    """The ``c.JupyterHub.services`` entry that runs the meter next to the hub.

    The meter reads the same `config_file` as the hub, so GPUs and prices are
    configured once. It needs no scopes on the hub's API for metering.
    """
    env = {key: os.environ[key] for key in PASS_ENV if key in os.environ}
    env.update(environment or {})
    return {
        "name": SERVICE_NAME,
        "url": url,
        "command": [sys.executable, "-m", "jupyter_gpu_meter.cli", "--config", config_file],
        "cwd": os.getcwd(),  # a relative ledger path means next to jupyterhub.sqlite
        "environment": env,
    }
