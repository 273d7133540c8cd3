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

import jinja2
from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from tornado import web

from ..homes import HomeVolumes
from ..pricing import Pricing
from .api import (
    ExportHandler,
    GPUsAPIHandler,
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
    return WebContext(
        reader=reader,
        live=live
        or LiveState(meter.state, health=meter.health, inventory_source=meter.inventory_source),
        hub_auth=hub_auth,
        hub_api=hub_api,
        templates=templates,
        settings=settings,
        prefix=prefix,
        hub_prefix=hub_prefix,
        base_url=base_url,
        service_name=os.environ.get("JUPYTERHUB_SERVICE_NAME") or "gpu-meter",
        homes=homes or HomeService.from_meter(meter),
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
        (prefix + "api/export.csv", ExportHandler, args),
        *budget_routes(prefix, args),
        *home_routes(prefix, args),
        (prefix + "api/openapi.yaml", OpenAPIHandler),
        (prefix + "api/.*", NotFoundAPIHandler),
        (prefix + "metrics", MetricsHandler, args),
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


def create_application(meter, prefix: str, **pieces) -> web.Application:
    """The meter's web app under `prefix` (``/services/gpu-meter/`` behind the hub).

    Health, the usage pages, the JSON API, the CSV export and /metrics
    (:mod:`jupyter_gpu_meter.service.web`). `pieces` replace parts of the
    running meter (a :class:`~jupyter_gpu_meter.service.app.MeterService`) in
    tests: ``hub_auth``, ``hub_api``, ``reader``, ``clock``, ``live``
    (a :class:`~jupyter_gpu_meter.service.reader.LiveState` on a real
    :class:`~jupyter_gpu_meter.service.state.MeterState`), ``homes`` (a
    :class:`~jupyter_gpu_meter.service.home_api.HomeService`).
    """
    context = make_context(meter, prefix, **pieces)
    scrub_web_logs()  # Tornado logs refused requests' URLs, tokens and all
    return web.Application(
        [(prefix + "api/health", HealthHandler, {"meter": meter}), *routes(context)],
        log_function=_log_request,
        **app_settings(context),
    )


def _log_request(handler):
    log_request(handler)  # without the OAuth codes and tokens a URL may carry
