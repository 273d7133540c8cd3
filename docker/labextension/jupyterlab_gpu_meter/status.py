"""``GET <base_url>gpu-meter/status``: the meter's figures for this server.

The notebook server asks the meter's ``api/server-status`` for itself (its
own ``$JUPYTERHUB_API_TOKEN``, ``?server=$JUPYTERHUB_SERVER_NAME``) and hands
the answer to the browser with ``"available": true`` added; when it cannot
(no meter URL, the meter down, slow or refusing) it answers
``{"available": false, "reason": "…"}``, still 200: the status bar then shows
"metering unavailable" and the reason as its tooltip.

One answer is reused for ``GPUMeterStatus.cache_seconds``, failures too, so
any number of open tabs of this server cost the meter at most one call per
period. The cache is owned by the event loop (the handlers and the fetch run
on it); callers at once share one fetch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httputil import url_concat
from traitlets import Float, Unicode, default, validate
from traitlets.config import Configurable

#: where the spawner puts the meter's base URL (as reachable from the container)
METER_URL_ENV = "JUPYTER_GPU_METER_API_URL"
#: at most this much of a meter's error message goes into a reason
MAX_REASON = 300


class GPUMeterStatus(Configurable):
    """Settings of ``<base_url>gpu-meter/status`` (``c.GPUMeterStatus.…`` in the
    notebook server's config, e.g. ``/opt/notebook/etc/jupyter/jupyter_server_config.py``)."""

    meter_api_url = Unicode(
        help=f"""
        The meter's base URL, ending in ``/``, e.g.
        ``http://172.18.0.1:10101/services/gpu-meter/``; this server asks
        ``<meter_api_url>api/server-status`` for its figures. Default:
        ``${METER_URL_ENV}``, which jupyter_gpu_meter's spawner sets in every
        container. "": no meter (the status bar shows "metering unavailable").
        """,
    ).tag(config=True)

    @default("meter_api_url")
    def _meter_api_url_default(self):
        return os.environ.get(METER_URL_ENV, "")

    @validate("meter_api_url")
    def _check_meter_api_url(self, proposal):
        url = proposal.value
        if url and not (url.startswith(("http://", "https://")) and url.endswith("/")):
            raise ValueError(
                f"GPUMeterStatus.meter_api_url {url!r}: give an http(s) URL ending in '/', "
                "e.g. 'http://172.18.0.1:10101/services/gpu-meter/', or '' for no meter"
            )
        return url

    server_name = Unicode(
        help="""
        Which of the user's servers this is, as the meter's ``?server=`` takes it
        ("" for the default server). Default: ``$JUPYTERHUB_SERVER_NAME``, which
        JupyterHub sets for named servers.
        """,
    ).tag(config=True)

    @default("server_name")
    def _server_name_default(self):
        return os.environ.get("JUPYTERHUB_SERVER_NAME", "")

    api_token = Unicode(
        help="""
        The token sent to the meter (``Authorization: token …``): the notebook
        server's own ``$JUPYTERHUB_API_TOKEN``, which JupyterHub issues with the
        scopes of ``c.Spawner.server_token_scopes``. Not configurable: read from
        the environment.
        """,
    )

    @default("api_token")
    def _api_token_default(self):
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    cache_seconds = Float(
        5.0,
        min=0.0,
        help="""
        How long one answer of the meter (or one failure) is reused, in seconds,
        e.g. 5: every open tab of this server shares it, so the server asks the
        meter at most 60 / cache_seconds times a minute. 0: every request asks.
        """,
    ).tag(config=True)

    request_timeout = Float(
        3.0,
        min=0.1,
        help="""
        How long to wait for the meter's answer (connecting included), in
        seconds, e.g. 3; longer, and the status bar shows "metering unavailable"
        until the next try.
        """,
    ).tag(config=True)


def unavailable(reason: str) -> dict:
    """The answer when the meter's figures cannot be had: why, in words."""
    return {"available": False, "reason": reason}


def _meter_message(body: bytes) -> str:
    """The message of a meter's JSON error (``{"status": …, "message": …}``), else ""."""
    try:
        message = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        return ""
    return str(message)[:MAX_REASON] if message else ""


async def fetch_status(settings: GPUMeterStatus, client: AsyncHTTPClient) -> dict:
    """Ask the meter for this server's figures; never raises: a failure is an
    :func:`unavailable` answer that says what went wrong."""
    if not settings.meter_api_url:
        return unavailable(
            f"no meter address: ${METER_URL_ENV} is not set (the hub's spawner knows no meter URL)"
        )
    if not settings.api_token:
        return unavailable("no token to ask the meter with: $JUPYTERHUB_API_TOKEN is not set")
    url = url_concat(settings.meter_api_url + "api/server-status", {"server": settings.server_name})
    try:
        response = await client.fetch(
            url,
            headers={"Authorization": f"token {settings.api_token}", "Accept": "application/json"},
            connect_timeout=settings.request_timeout,
            request_timeout=settings.request_timeout,
            follow_redirects=False,
            raise_error=False,
        )
    except HTTPClientError as e:  # timeouts come as 599
        return unavailable(f"the meter did not answer: {e}")
    except OSError as e:
        return unavailable(f"cannot reach the meter at {settings.meter_api_url}: {e}")
    if response.code != 200:
        message = _meter_message(response.body or b"")
        return unavailable(f"the meter answered {response.code}{': ' if message else ''}{message}")
    try:
        answer = json.loads(response.body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return unavailable("the meter's answer is not a JSON object")
    return {**answer, "available": True}


class StatusCache:
    """The last answer of `fetch`, reused for `period` seconds of `clock`.

    Owned by the event loop. Calls while a fetch is under way await that one;
    `fetch` must not raise (:func:`fetch_status` does not). Each fetch is
    logged at DEBUG (``--ServerApp.log_level=DEBUG`` shows the meter's load).
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[dict]],
        period: float,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger | None = None,
    ):
        self.fetch = fetch
        self.period = period
        self.clock = clock
        self.log = log or logging.getLogger(__name__)
        self.fetches = 0  # how many times the meter was asked (tests, logs)
        self._answer: dict | None = None
        self._asked_at = 0.0
        self._pending: asyncio.Future | None = None

    async def get(self) -> dict:
        if self._answer is not None and self.clock() - self._asked_at < self.period:
            return self._answer
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._refresh())
        return await asyncio.shield(self._pending)

    async def _refresh(self) -> dict:
        asked_at = self.clock()
        self.fetches += 1
        try:
            answer = await self.fetch()
        finally:
            self._pending = None
        self._answer, self._asked_at = answer, asked_at
        self.log.debug(
            "jupyterlab_gpu_meter: asked the meter: %s",
            "available" if answer.get("available") else answer.get("reason"),
        )
        return answer


class StatusHandler(APIHandler):
    """``GET <base_url>gpu-meter/status``: this server's figures from the meter."""

    def initialize(self, cache: StatusCache):
        self.cache = cache

    @web.authenticated
    async def get(self) -> None:
        answer = await self.cache.get()
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(answer))


def setup(serverapp, *, clock: Callable[[], float] = time.monotonic) -> StatusCache:
    """Add ``GET <base_url>gpu-meter/status`` to `serverapp`; return its cache."""
    settings = GPUMeterStatus(parent=serverapp)
    client = AsyncHTTPClient()
    cache = StatusCache(
        lambda: fetch_status(settings, client), settings.cache_seconds, clock, serverapp.log
    )
    base_url = serverapp.web_app.settings["base_url"]
    route = url_path_join(base_url, "gpu-meter", "status")
    serverapp.web_app.add_handlers(".*$", [(route, StatusHandler, {"cache": cache})])
    serverapp.log.info(
        "jupyterlab_gpu_meter: %s asks %s every %ss at most",
        route,
        settings.meter_api_url or "no meter",
        settings.cache_seconds,
    )
    return cache
