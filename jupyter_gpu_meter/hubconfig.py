"""Helpers for ``jupyterhub_config.py``: register the meter as a managed hub service."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from .gpus import SIMULATED_ENV
from .identity import HUB_ID_ENV, default_hub_id
from .ledger import DB_URL_ENV
from .network import DEFAULT_NETWORK, NotebookNetwork, ensure_network
from .sampler import SIMULATED_UTILIZATION_ENV
from .scopes import (
    BUDGETS_DESCRIPTION,
    BUDGETS_SCOPE,
    READ_ALL_DESCRIPTION,
    READ_ALL_SCOPE,
    STOP_SCOPE,
)

#: the service's name, and so its URL prefix: /services/gpu-meter/
SERVICE_NAME = "gpu-meter"
#: variables the hub passes on to the meter (a managed service gets a minimal environment)
#: the prefix of this package's own environment variables, all passed to the meter
ENV_PREFIX = "JUPYTER_GPU_METER_"
PASS_ENV = (
    SIMULATED_ENV,
    SIMULATED_UTILIZATION_ENV,
    DB_URL_ENV,
    "DOCKER_HOST",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "LD_LIBRARY_PATH",
)


#: what the meter may do on the hub's API, and why (least privilege: not ``servers``,
#: which would also let it start servers and read their models)
METER_SCOPES = {
    STOP_SCOPE: (
        "stop a server that a policy (GPU idle, GPU lost, max age, budget) ends, or that a "
        "caller holding delete:servers for it stops from the usage pages "
        "(DELETE /users/:name/server)"
    ),
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
    config_file: str, *, url: str | None = None, environment: dict | None = None
) -> dict:
    """The ``c.JupyterHub.services`` entry that runs the meter next to the hub.

    The meter reads the same `config_file` as the hub, so GPUs and prices are
    configured once. It needs no scopes on the hub's API for metering. It
    listens on `url`; by default on a port of 127.0.0.1 that is free when
    the hub loads its config, so two hubs on one host never compete for one
    (the hub's proxy routes ``/services/gpu-meter/`` to wherever it is).
    It gets the hub's id (:class:`~jupyter_gpu_meter.identity.HubIdentity`)
    in ``$JUPYTER_GPU_METER_HUB_ID``, so it meters this hub's servers only,
    and every other ``JUPYTER_GPU_METER_*`` variable of the hub's environment,
    so the config file reads the same values in both (the hub passes its
    services almost nothing of its own environment).
    """
    from jupyterhub.utils import random_port

    # and every JUPYTER_GPU_METER_* variable: the config file both read may read them
    # (the shipped one takes the image, the network, the GPUs from them)
    env = {
        key: value
        for key, value in os.environ.items()
        if key in PASS_ENV or key.startswith(ENV_PREFIX)
    }
    env[HUB_ID_ENV] = default_hub_id()
    env.update(environment or {})
    return {
        "name": SERVICE_NAME,
        "url": url or f"http://127.0.0.1:{random_port()}",
        "command": [sys.executable, "-m", "jupyter_gpu_meter.cli", "--config", config_file],
        "cwd": os.getcwd(),  # a relative ledger path means next to jupyterhub.sqlite
        "environment": env,
    }


# --- usage pages: access, the custom scope, the hub's navigation bar ---------------

#: the scope that lets a user (or a token) use the service at all: pages, API, CSV
ACCESS_SCOPE = f"access:services!service={SERVICE_NAME}"
#: the hub template dir whose page.html adds "GPU usage" to the hub's navigation bar
TEMPLATE_PATH = str(Path(__file__).parent / "hub_templates")
#: the role that grants READ_ALL_SCOPE (see read_all_role)
READ_ALL_ROLE = "gpu-meter-read-all"
#: the role that grants BUDGETS_SCOPE (see budgets_role)
BUDGETS_ROLE = "gpu-meter-budgets"
#: what the service's OAuth tokens (the browsers' logins) may carry, each intersected
#: by the hub with what the user holds: an ordinary user gets delete:servers!user=<them>
OAUTH_SCOPES = (READ_ALL_SCOPE, BUDGETS_SCOPE, STOP_SCOPE)


def template_paths(existing=()) -> list[str]:
    """``c.JupyterHub.template_paths`` with the "GPU usage" link added (after yours).

    A ``page.html`` of your own earlier in the list wins: add the link there
    (see ``jupyter_gpu_meter/hub_templates/page.html``).
    """
    paths = [str(path) for path in existing or ()]
    return paths if TEMPLATE_PATH in paths else [*paths, TEMPLATE_PATH]


def idle_culler_role(service: str = "idle-culler") -> dict:
    """The role for a jupyterhub-idle-culler service using
    :class:`jupyter_gpu_meter.idle_culler.GPUCullArbiter`: the culler's own
    scopes, plus reading who holds which GPU from the meter."""
    return {
        "name": f"{service}-gpu-aware",
        "scopes": [
            "list:users",
            "read:users:activity",
            "read:servers",
            "delete:servers",
            f"read:services!service={SERVICE_NAME}",  # where the meter listens
            ACCESS_SCOPE,
            READ_ALL_SCOPE,
        ],
        "services": [service],
    }


def read_all_role(users=(), groups=()) -> dict:
    """A role that lets `users` and `groups` see every user's usage (not stop servers)."""
    return {
        "name": READ_ALL_ROLE,
        "description": READ_ALL_DESCRIPTION,
        "scopes": [READ_ALL_SCOPE, ACCESS_SCOPE],
        "users": list(users),
        "groups": list(groups),
    }


def budgets_role(users=(), groups=()) -> dict:
    """A role that lets `users` and `groups` set, grant and remove budgets.

    ``setup_meter`` gives it to the hub's admins (``c.Authenticator.admin_users``
    and the members of an ``admin`` role in ``load_roles``) and to whom you name.
    """
    return {
        "name": BUDGETS_ROLE,
        "description": BUDGETS_DESCRIPTION,
        "scopes": [BUDGETS_SCOPE, ACCESS_SCOPE],
        "users": sorted(set(users)),
        "groups": sorted(set(groups)),
    }


def _configured_admins(c, roles: list) -> tuple[set, set]:
    """The admins named in the config so far: users and groups."""
    users = set(_current(c.Authenticator, "admin_users", set()))
    groups = set()
    for role in roles:
        if role.get("name") == "admin":
            users |= set(role.get("users", ()))
            groups |= set(role.get("groups", ()))
    return users, groups


def _current(section, name: str, empty):
    """A config value as set so far (a LazyConfigValue's value too), else `empty`."""
    value = section.get(name)
    if value is None:
        return empty
    if hasattr(value, "get_value"):
        return value.get_value(empty)
    return value


def _put_named(entries: list, entry: dict) -> list:
    """`entries` with `entry` in place of the one of the same name (or appended)."""
    return [e for e in entries if e.get("name") != entry["name"]] + [entry]


def _grant_users_access(c) -> None:
    """Every user may use the service (JupyterHub 5 gives users no service access)."""
    from jupyterhub import version_info

    if version_info >= (6,):
        scopes = set(_current(c.JupyterHub, "extra_user_scopes", set()))
        c.JupyterHub.extra_user_scopes = scopes | {ACCESS_SCOPE}
        return
    roles = list(_current(c.JupyterHub, "load_roles", []))
    user = next((role for role in roles if role.get("name") == "user"), None)
    scopes = list(user.get("scopes", ["self"])) if user else ["self"]
    if ACCESS_SCOPE not in scopes:
        scopes.append(ACCESS_SCOPE)
    c.JupyterHub.load_roles = _put_named(roles, {**(user or {"name": "user"}), "scopes": scopes})


def _grant_servers_access(c) -> None:
    """A notebook server's own token (``$JUPYTERHUB_API_TOKEN``) may use the meter.

    :data:`ACCESS_SCOPE` is added to the ``server`` role, whose scopes the hub
    gives that token when ``c.Spawner.server_token_scopes`` is not set, keeping
    the role's own (JupyterHub's ``users:activity!user`` and
    ``access:servers!server``, or yours); where ``server_token_scopes`` is a
    list (it replaces the role), to that list. A callable there is yours to
    extend. The hub gives the token only what its user holds: their own
    access to the meter, never read-all, budgets or stopping servers.
    """
    from jupyterhub.roles import get_default_roles

    for section in (c.Spawner, c.GPUDockerSpawner):
        requested = _current(section, "server_token_scopes", [])
        if (
            isinstance(requested, (list, tuple, set))
            and requested
            and ACCESS_SCOPE not in requested
        ):
            section.server_token_scopes = [*requested, ACCESS_SCOPE]
    roles = list(_current(c.JupyterHub, "load_roles", []))
    default = next(role for role in get_default_roles() if role["name"] == "server")
    role = next((role for role in roles if role.get("name") == "server"), default)
    scopes = list(role.get("scopes", default["scopes"]))
    if ACCESS_SCOPE not in scopes:
        scopes.append(ACCESS_SCOPE)
    c.JupyterHub.load_roles = _put_named(roles, {**role, "scopes": scopes})


def notebook_meter_url(service_url: str, *, host: str, base_url: str = "/") -> str:
    """The meter's base URL from a notebook on `host`'s side: `service_url`'s scheme and
    port, `host`, the service's prefix under the hub's `base_url`. Pure."""
    url = urlparse(service_url)
    prefix = base_url.rstrip("/") + f"/services/{SERVICE_NAME}/"
    return f"{url.scheme}://{host}:{url.port or 80}{prefix}"


def _point_notebooks_at_meter(c) -> None:
    """``c.GPUDockerSpawner.meter_api_url``, once both the meter (:func:`setup_meter`) and
    the notebooks' network are known: with host networking, the meter's own URL; on
    the notebooks' network (:func:`setup_network`), its gateway
    (``c.MeterService.notebook_ip``, where the meter listens too). Else unset."""
    services = _current(c.JupyterHub, "services", [])
    service = next((s for s in services if s.get("name") == SERVICE_NAME), None)
    if service is None:
        return
    if _current(c.GPUDockerSpawner, "network_name", DEFAULT_NETWORK) == "host":
        host = urlparse(service["url"]).hostname
    else:
        host = _current(c.MeterService, "notebook_ip", "")
    if host:
        base_url = _current(c.JupyterHub, "base_url", "/")
        c.GPUDockerSpawner.meter_api_url = notebook_meter_url(
            service["url"], host=host, base_url=base_url
        )


def setup_meter(
    c,
    config_file: str,
    *,
    url: str | None = None,
    environment: dict | None = None,
    read_all_users=(),
    read_all_groups=(),
    budget_users=(),
    budget_groups=(),
) -> None:
    """Configure the hub for the meter, in ``jupyterhub_config.py``: ``setup_meter(c, __file__)``.

    - runs the meter as the managed service ``gpu-meter`` (:func:`meter_service`),
      shown in the hub's Services menu, logging users in through the hub's
      OAuth without a confirmation page, and asking there for
      :data:`OAUTH_SCOPES` (read-all, budgets, ``delete:servers``): the hub
      gives each login only what its user holds, so the pages act with the
      user's own scopes;
    - gives the service its role (:func:`meter_role`);
    - defines the custom scopes :data:`READ_ALL_SCOPE` and :data:`BUDGETS_SCOPE`;
      when `read_all_users` or `read_all_groups` are given, a role granting
      read-all (:func:`read_all_role`);
    - grants :data:`BUDGETS_SCOPE` to the hub's admins as configured so far
      (``c.Authenticator.admin_users``, an ``admin`` role in ``load_roles``:
      set them before calling this) and to `budget_users` and `budget_groups`
      (:func:`budgets_role`). JupyterHub does not let a config extend the
      built-in ``admin`` role's scopes, and admins made in the admin panel
      are not in the config: name those in `budget_users`;
    - lets every user use the service (:data:`ACCESS_SCOPE`), and each notebook
      server's own token too, for its user (:func:`_grant_servers_access`);
    - tells the spawner where notebooks reach the meter
      (``c.GPUDockerSpawner.meter_api_url``: call it after choosing the network,
      see :func:`setup_network`);
    - adds "GPU usage" to the hub's navigation bar (:func:`template_paths`).

    Calling it again replaces what it set; other services and roles stay.
    """
    service = meter_service(config_file, url=url, environment=environment)
    service.update(
        display=True,
        oauth_no_confirm=True,
        oauth_client_allowed_scopes=list(OAUTH_SCOPES),
    )
    c.JupyterHub.services = _put_named(list(_current(c.JupyterHub, "services", [])), service)
    roles = _put_named(list(_current(c.JupyterHub, "load_roles", [])), meter_role())
    if read_all_users or read_all_groups:
        roles = _put_named(roles, read_all_role(read_all_users, read_all_groups))
    admins, admin_groups = _configured_admins(c, roles)
    roles = _put_named(
        roles, budgets_role(admins | set(budget_users), admin_groups | set(budget_groups))
    )
    c.JupyterHub.load_roles = roles
    c.JupyterHub.custom_scopes = {
        **_current(c.JupyterHub, "custom_scopes", {}),
        READ_ALL_SCOPE: {"description": READ_ALL_DESCRIPTION},
        BUDGETS_SCOPE: {"description": BUDGETS_DESCRIPTION},
    }
    _grant_users_access(c)
    _grant_servers_access(c)
    _point_notebooks_at_meter(c)
    c.JupyterHub.template_paths = template_paths(_current(c.JupyterHub, "template_paths", []))


def setup_network(c, name: str = DEFAULT_NETWORK, *, internal: bool = False) -> NotebookNetwork:
    """Put notebooks on their own Docker network, in ``jupyterhub_config.py``.

    Creates the network `name` if it does not exist (a bridge with traffic
    between containers off, :mod:`jupyter_gpu_meter.network`), puts the
    spawner's notebooks on it, and lets the hub's API listen on the
    network's gateway address (``c.JupyterHub.hub_ip``), the one address of
    the host notebooks reach. The meter listens there too
    (``c.MeterService.notebook_ip``), answering only ``api/server-status``
    and ``api/health``; notebooks find it in ``$JUPYTER_GPU_METER_API_URL``.
    Services on the host's loopback (the meter's pages, the proxy's API, a
    local PostgreSQL) stay out of their reach. Needs the Docker engine when
    the config is loaded. Returns the network.
    """
    import docker

    network = ensure_network(docker.from_env().api, name, internal=internal)
    c.GPUDockerSpawner.network_name = network.name
    c.GPUDockerSpawner.network_internal = internal
    c.JupyterHub.hub_ip = network.gateway
    c.MeterService.notebook_ip = network.gateway
    _point_notebooks_at_meter(c)
    return network


def check_config(c) -> None:
    """Validate the settings read only when a server starts, in ``jupyterhub_config.py``.

    Call it last: ``check_config(c)``. JupyterHub builds a spawner (and so
    reads ``c.Datasets``) only when a server starts; this builds those
    settings now, so a bad one stops the hub at start with a ValueError that
    says what is allowed, instead of failing every start later: the dataset
    definitions (``c.Datasets``) and the datasets each profile of
    ``c.GPUDockerSpawner.profile_list`` names, and the templates' settings
    (``c.Templates``).
    """
    from .choice import parse_profiles
    from .datasets import Datasets
    from .spawner_templates import Templates

    Templates(config=c)

    defined = Datasets(config=c).by_name()
    profiles = parse_profiles(c.get("GPUDockerSpawner", {}).get("profile_list", []))
    for profile in profiles:
        unknown = [name for name in profile.datasets or () if name not in defined]
        if unknown:
            raise ValueError(
                f"profile {profile.slug!r} names the dataset(s) {', '.join(map(repr, unknown))}, "
                f"which c.Datasets.definitions does not define; defined: "
                f"{', '.join(defined) or 'none'}"
            )
