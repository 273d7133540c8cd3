"""Which hub this is: the id its containers carry, so two hubs can share one Docker engine.

The spawner labels every container with the hub's id and the meter meters
only containers with its own hub's id. Set it once in ``jupyterhub_config.py``
(``c.HubIdentity.hub_id = "prod"``): the hub and the meter read the same file.
"""

from __future__ import annotations

import hashlib
import os
import re

from traitlets import Unicode, default, validate
from traitlets.config import Configurable

#: the environment variable that names the hub's id (setup_meter passes it to the meter)
HUB_ID_ENV = "JUPYTER_GPU_METER_HUB_ID"
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def default_hub_id(cwd: str | None = None) -> str:
    """``$JUPYTER_GPU_METER_HUB_ID``, else ``hub-`` and a hash of the hub's working directory.

    A hub's working directory holds its database (``jupyterhub.sqlite``) and
    is the meter's too (a managed service starts there), so two hubs on one
    host get different ids and a hub keeps its id across restarts.
    """
    configured = os.environ.get(HUB_ID_ENV, "").strip()
    if configured:
        return configured
    where = os.path.realpath(cwd or os.getcwd())
    return "hub-" + hashlib.sha256(where.encode()).hexdigest()[:12]


class HubIdentity(Configurable):
    """This hub's id on a shared Docker engine (``c.HubIdentity.hub_id``)."""

    hub_id = Unicode(
        help=f"""
        This hub's id, carried by every notebook container it starts (the
        label ``jupyter-gpu-meter.hub``), e.g. ``"prod"``. The meter meters
        only containers with its own hub's id; GPUs held by any hub's
        container are never handed out twice. Letters, digits, ``.``, ``_``
        and ``-``, at most 63. Defaults to ``${HUB_ID_ENV}``, else ``hub-``
        and a hash of the hub's working directory. Changing it while servers
        run leaves them to no meter: stop them first.
        """,
    ).tag(config=True)

    @default("hub_id")
    def _hub_id_default(self):
        return default_hub_id()

    @validate("hub_id")
    def _check_hub_id(self, proposal):
        value = proposal.value
        if not _VALID.fullmatch(value):
            raise ValueError(
                f"hub_id {value!r}: use 1 to 63 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit, e.g. 'prod'"
            )
        return value
