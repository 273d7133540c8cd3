"""GPU awareness for jupyterhub-idle-culler 2.x: a ``cull_arbiter_hook``.

For admins who already run the idle culler. In the culler's config file
(``jupyterhub_idle_culler --config=idle_culler_config.py``)::

    from jupyter_gpu_meter.idle_culler import GPUCullArbiter

    c.IdleCuller.cull_arbiter_hook = GPUCullArbiter(gpu_inactive_limit=2 * 3600)

Then a server whose GPUs are busy is never culled, a GPU server is culled
after ``gpu_inactive_limit`` seconds without activity (the culler's own
``--timeout`` for CPU-only servers), and if the meter cannot be asked, the
culler's classic rule applies. The culler's token needs, besides the
culler's own scopes, ``access:services!service=gpu-meter`` and
``custom:gpu-meter:read-all`` to read who holds which GPU (see
:func:`jupyter_gpu_meter.hubconfig.idle_culler_role`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from urllib.parse import unquote, urlparse

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

log = logging.getLogger(__name__)

METER_URL_ENV = "JUPYTER_GPU_METER_URL"
#: the meter's service name, whose address the hub's API gives (scope read:services)
METER_SERVICE = "gpu-meter"


def server_owner(server: dict) -> tuple[str, str] | None:
    """(user, server name) from a hub server model's ``url``: /user/ada/ or /user/ada/big/."""
    parts = [unquote(part) for part in urlparse(server.get("url", "")).path.split("/") if part]
    if "user" not in parts:
        return None
    rest = parts[parts.index("user") + 1 :]
    if not rest:
        return None
    return rest[0], server.get("name", rest[1] if len(rest) > 1 else "")


class GPUCullArbiter:
    """``cull_arbiter_hook(*, inactive, inactive_limit, server)``, asking the meter about GPUs."""

    def __init__(
        self,
        *,
        gpu_inactive_limit: int | None = None,
        busy_threshold: float = 5.0,
        meter_url: str | None = None,
        token: str | None = None,
        cache_seconds: float = 10.0,
    ):
        self.gpu_inactive_limit = gpu_inactive_limit
        self.busy_threshold = busy_threshold
        #: where the meter is; None: ask the hub (:meth:`find_meter`) on first use
        self.meter_url = meter_url or os.environ.get(METER_URL_ENV) or None
        self.token = token or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        self.cache_seconds = cache_seconds
        self._cache: tuple[float, list] | None = None

    async def find_meter(self) -> str:
        """The meter's address, from the hub's API (``GET services/gpu-meter``: its
        ``url`` and ``prefix``; scope ``read:services!service=gpu-meter``)."""
        api_url = os.environ.get("JUPYTERHUB_API_URL", "").rstrip("/")
        if not api_url:
            raise RuntimeError(
                f"no meter URL: set {METER_URL_ENV}, or run the culler as a hub service"
            )
        request = HTTPRequest(
            f"{api_url}/services/{METER_SERVICE}",
            headers={"Authorization": f"token {self.token}"},
            request_timeout=10,
        )
        model = json.loads((await AsyncHTTPClient().fetch(request)).body)
        if not model.get("url"):
            raise RuntimeError(
                f"the hub does not tell the culler where {METER_SERVICE} listens: give it the "
                f"scope read:services!service={METER_SERVICE} (idle_culler_role() does)"
            )
        return model["url"].rstrip("/") + (model.get("prefix") or f"/services/{METER_SERVICE}/")

    async def gpus(self) -> list[dict]:
        """The meter's ``api/gpus`` rows, cached for `cache_seconds` (one culler pass)."""
        if self._cache and time.monotonic() - self._cache[0] < self.cache_seconds:
            return self._cache[1]
        if self.meter_url is None:
            self.meter_url = await self.find_meter()
        request = HTTPRequest(
            self.meter_url.rstrip("/") + "/api/gpus",
            headers={"Authorization": f"token {self.token}"},
            request_timeout=10,
        )
        response = await AsyncHTTPClient().fetch(request)
        body = json.loads(response.body)
        rows = body["gpus"] if isinstance(body, dict) else body
        self._cache = (time.monotonic(), rows)
        return rows

    async def __call__(self, *, inactive, inactive_limit, server, **kwargs) -> bool:
        classic = inactive.total_seconds() >= inactive_limit
        owner = server_owner(server)
        try:
            gpus = await self.gpus()
        except Exception as e:
            log.warning("GPU meter unavailable (%s): culling by activity only", e)
            return classic
        held = [
            gpu
            for gpu in gpus
            if gpu.get("holder")
            and (gpu["holder"].get("user"), gpu["holder"].get("server", "")) == owner
        ]
        if not held:
            return classic  # CPU only (or the meter does not know it)
        if any((gpu.get("utilization") or 0) >= self.busy_threshold for gpu in held):
            return False  # training: never cull while its GPUs work
        limit = self.gpu_inactive_limit if self.gpu_inactive_limit is not None else inactive_limit
        return inactive.total_seconds() >= limit
