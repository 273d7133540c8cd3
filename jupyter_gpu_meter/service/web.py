"""The meter's web app: pages, JSON API, CSV, /metrics, wired for ``create_application``.

Everything a handler needs comes in through ``initialize(context)``: one
:class:`WebContext` made from the running meter by :func:`make_context`.
Tests pass their own pieces (a ledger, a clock, a HubOAuth that knows their
tokens) as keyword arguments.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from urllib.parse import urlparse

import jinja2
from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from tornado import web
from tornado.httpserver import HTTPServer

from ..homes import HomeVolumes
from ..pricing import Pricing
from .api import (
    ExportHandler,
    GPUsAPIHandler,
    NodesAPIHandler,
    NotFoundAPIHandler,
    OpenAPIHandler,
    UsageAPIHandler,
    UsersAPIHandler,
)
from .budget_api import budget_routes
from .handlers import HealthHandler
from .home_api import HomeService, home_routes
from .hubapi import HubAPI
from .logs import log_request, scrub_web_logs
from .metrics import MetricsHandler
from .pages import (
    STATIC,
    AdminPageHandler,
    BudgetFormHandler,
    StopServerHandler,
    UserPageHandler,
    make_templates,
)
from .reader import LiveState, UsagePages, UsageReader
from .server_status import ServerStatusHandler, StatusSource
from .ssh_api import SSHKeys, ssh_routes
from .ssh_client import ClientWheelHandler
from .ssh_push import KeyPusher


@dataclass
class WebContext:
    """What the handlers share (passed to each through ``initialize``)."""

    reader: UsageReader
    live: LiveState
    hub_auth: HubOAuth
    hub_api: HubAPI
    templates: jinja2.Environment
    settings: UsagePages
    #: the service's URL prefix, e.g. /services/gpu-meter/
    prefix: str
    #: the hub's prefix, e.g. /hub/
    hub_prefix: str
    #: the hub's base URL, e.g. /
    base_url: str
    service_name: str = "gpu-meter"
    #: homes and snapshots (Docker); None where the meter has no Docker engine
    homes: HomeService | None = None
    #: what api/server-status reads (the policy runner, the ledger's caches)
    status: StatusSource | None = None
    #: writes users' SSH keys into their servers; None where the meter has no Docker engine
    ssh: KeyPusher | None = None
    #: the usage page's SSH section (c.SSHKeys)
    ssh_settings: SSHKeys | None = None
    #: cluster mode (``c.MeterService.cluster``): GPUs and nodes come from the ledger
    cluster: bool = False


def _hub_config(meter, name: str, default):
    """A ``c.JupyterHub.<name>`` value from the hub's config file the meter loaded."""
    config = getattr(meter, "config", None) or {}
    value = config.get("JupyterHub", {}).get(name, default)
    if hasattr(value, "get_value"):  # a LazyConfigValue (c.JupyterHub.x.append(...))
        value = value.get_value(type(default)())
    return value


def make_context(
    meter,
    prefix: str,
    *,
    hub_auth: HubOAuth | None = None,
    hub_api: HubAPI | None = None,
    reader: UsageReader | None = None,
    clock=None,
    live: LiveState | None = None,
    homes: HomeService | None = None,
    status: StatusSource | None = None,
    ssh: KeyPusher | None = None,
) -> WebContext:
    """The web app's shared state, from the running meter (its ledger, pricing, config,
    and its :class:`~jupyter_gpu_meter.service.state.MeterState` through `live`)."""
    parent = meter if hasattr(meter, "config") else None
    settings = UsagePages(parent=parent)
    if reader is None:
        pricing = getattr(meter, "pricing", None) or Pricing(parent=parent)
        clock = clock or getattr(meter, "clock", None)  # the meter's (MeterService.clock)
        extra = {"clock": clock} if clock is not None else {}
        if hasattr(meter, "budget_view"):
            extra["budget"] = meter.budget_view
        volumes = getattr(meter, "home_volumes", None) or HomeVolumes(parent=parent)
        reader = UsageReader(
            meter.ledger,
            currency=pricing.currency,
            settings=settings,
            size_warning=volumes.size_warning,
            **extra,
        )
    if hub_auth is None:
        hub_auth = HubOAuth(parent=parent, base_url=prefix, cache_max_age=60)
    if hub_api is None:
        hub_api = HubAPI(hub_auth.api_url, os.environ.get("JUPYTERHUB_API_TOKEN", ""))
    hub_prefix = hub_auth.hub_prefix
    base_url = hub_prefix[: -len("hub/")] if hub_prefix.endswith("/hub/") else "/"
    templates = make_templates(
        _hub_config(meter, "template_paths", []), _hub_config(meter, "template_vars", {})
    )
    live = live or LiveState(
        meter.state, health=meter.health, inventory_source=meter.inventory_source
    )
    return WebContext(
        reader=reader,
        live=live,
        hub_auth=hub_auth,
        hub_api=hub_api,
        templates=templates,
        settings=settings,
        prefix=prefix,
        hub_prefix=hub_prefix,
        base_url=base_url,
        service_name=os.environ.get("JUPYTERHUB_SERVICE_NAME") or "gpu-meter",
        homes=homes or HomeService.from_meter(meter),
        status=status or StatusSource.from_meter(meter, live),
        ssh=ssh or getattr(meter, "ssh_keys", None),
        ssh_settings=SSHKeys(parent=parent),
        cluster=bool(getattr(meter, "cluster", False)),
    )


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    """``GET oauth_callback``: the end of the hub's OAuth login; sets the service's cookie."""

    def initialize(self, context):
        self.hub_auth = context.hub_auth


def routes(context: WebContext) -> list:
    """The URL patterns of pages, API, metrics, static files and the OAuth callback."""
    prefix = context.prefix
    args = {"context": context}
    callback = prefix + "oauth_callback"
    return [
        (prefix, UserPageHandler, args),
        (prefix + "admin", AdminPageHandler, args),
        (prefix + "admin/stop", StopServerHandler, args),
        (prefix + "admin/budget", BudgetFormHandler, args),
        (prefix + "api/usage", UsageAPIHandler, args),
        (prefix + "api/users", UsersAPIHandler, args),
        (prefix + "api/gpus", GPUsAPIHandler, args),
        (prefix + "api/nodes", NodesAPIHandler, args),
        (prefix + "api/server-status", ServerStatusHandler, args),
        (prefix + "api/export.csv", ExportHandler, args),
        *budget_routes(prefix, args),
        *home_routes(prefix, args),
        *ssh_routes(prefix, args),
        (prefix + "api/openapi.yaml", OpenAPIHandler),
        (prefix + "api/.*", NotFoundAPIHandler),
        (prefix + "metrics", MetricsHandler, args),
        (prefix + "ssh/([^/]+)", ClientWheelHandler, {"prefix": prefix}),
        (callback, OAuthCallbackHandler, args),
        (prefix + "static/(.*)", web.StaticFileHandler, {"path": str(STATIC)}),
    ]


def app_settings(context: WebContext) -> dict:
    """Tornado settings the hub's OAuth needs: a cookie secret (new at each start: a
    restarted meter sends browsers through the hub's login again, without a prompt)."""
    return {
        "cookie_secret": secrets.token_bytes(32),
        "login_url": context.hub_auth.login_url,
        "static_hash_cache": True,
    }


def create_application(
    meter, prefix: str, *, context: WebContext | None = None, **pieces
) -> web.Application:
    """The meter's web app under `prefix` (``/services/gpu-meter/`` behind the hub).

    Health, the usage pages, the JSON API, the CSV export and /metrics
    (:mod:`jupyter_gpu_meter.service.web`). `pieces` replace parts of the
    running meter (a :class:`~jupyter_gpu_meter.service.app.MeterService`) in
    tests: ``hub_auth``, ``hub_api``, ``reader``, ``clock``, ``live``
    (a :class:`~jupyter_gpu_meter.service.reader.LiveState` on a real
    :class:`~jupyter_gpu_meter.service.state.MeterState`), ``homes`` (a
    :class:`~jupyter_gpu_meter.service.home_api.HomeService`), ``status`` (a
    :class:`~jupyter_gpu_meter.service.server_status.StatusSource`), ``ssh`` (a
    :class:`~jupyter_gpu_meter.service.ssh_push.KeyPusher`); or `context`, one made by
    :func:`make_context` (shared with the notebooks' app).
    """
    context = context or make_context(meter, prefix, **pieces)
    scrub_web_logs()  # Tornado logs refused requests' URLs, tokens and all
    return web.Application(
        [(prefix + "api/health", HealthHandler, {"meter": meter}), *routes(context)],
        log_function=_log_request,
        **app_settings(context),
    )


class NotebookNotFoundHandler(NotFoundAPIHandler):
    """Anything else on the notebooks' address: a JSON 404 that says what is there."""

    def prepare(self):
        raise web.HTTPError(
            404,
            "on the address notebooks reach, the meter answers only api/server-status and "
            "api/health; the rest is at /services/gpu-meter/ through the hub",
        )


def create_notebook_application(meter, context: WebContext) -> web.Application:
    """What the meter answers on the address notebooks reach (``c.MeterService.notebook_ip``):
    ``api/server-status`` and ``api/health`` under the same prefix, a JSON 404 for the
    rest (no pages, no OAuth, no /metrics: the least that notebooks need)."""
    prefix = context.prefix
    args = {"context": context}
    return web.Application(
        [
            (prefix + "api/health", HealthHandler, {"meter": meter}),
            (prefix + "api/server-status", ServerStatusHandler, args),
            (".*", NotebookNotFoundHandler),
        ],
        log_function=_log_request,
        **app_settings(context),
    )


def listen(meter, service_url: str, prefix: str, notebook_ip: str = "") -> list[HTTPServer]:
    """Serve the meter's app on `service_url`, and on `notebook_ip` (same port) the
    notebooks' (:func:`create_notebook_application`); the HTTP servers, to stop."""
    url = urlparse(service_url)
    port = url.port or 80
    context = make_context(meter, prefix)
    server = HTTPServer(create_application(meter, prefix, context=context), xheaders=True)
    server.listen(port, url.hostname or "127.0.0.1")
    meter.log.info("GPU meter listening on %s%s", service_url, prefix)
    servers = [server]
    if notebook_ip and notebook_ip != url.hostname:
        # no proxy in front of this one: an X-Forwarded-For would be the notebook's word
        servers.append(HTTPServer(create_notebook_application(meter, context)))
        servers[-1].listen(port, notebook_ip)
        meter.log.info("... and for notebooks on http://%s:%s%s", notebook_ip, port, prefix)
    return servers


def _log_request(handler):
    log_request(handler)  # without the OAuth codes and tokens a URL may carry
