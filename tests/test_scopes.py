"""Actions are checked against the caller's token's scopes, as the hub checks them.

The pure check (Viewer) is compared with the hub's own ``has_scope`` on a real
hub database (users, groups); the web tests run the real app (as in
test_usage_web.py) with tokens scoped down or filtered. The same through a
real hub and its OAuth: test_e2e_scopes.py.
"""

import json
import re
from urllib.parse import urlencode

import pytest
from jupyterhub import orm
from jupyterhub.scopes import expand_scopes, has_scope
from tornado.httpclient import HTTPClientError

from jupyter_gpu_meter import hubconfig
from jupyter_gpu_meter.hubconfig import (
    BUDGETS_ROLE,
    METER_SCOPES,
    budgets_role,
    meter_role,
    setup_meter,
)
from jupyter_gpu_meter.identity import default_hub_id
from jupyter_gpu_meter.service.auth import BUDGETS_SCOPE, READ_ALL_SCOPE, Viewer
from tests.test_usage_web import (  # noqa: F401 (meter is a fixture)
    ACCESS,
    MODELS,
    NOW,
    PREFIX,
    KnownTokens,
    body,
    fetch,
    logged_in_browser,
    meter,
    serve_app,
)

# --- the check itself, against the hub's --------------------------------------------------

#: token scopes (raw, as a role or token lists them) -> what they let stop
TOKENS = [
    ["delete:servers"],
    ["admin:servers"],
    ["servers!user=ada"],
    ["delete:servers!user=ada"],
    ["delete:servers!server=ada/train"],
    ["delete:servers!group=students"],
    ["delete:servers!group=staff", "delete:servers!user=bob"],
    ["read:servers", "read:users", ACCESS],  # read-only
    ["access:servers!user=ada", "start:servers!user=ada"],
]
TARGETS = [("ada", ""), ("ada", "train"), ("bob", ""), ("carol", "x")]
GROUPS = {"ada": ["students"], "bob": [], "carol": ["staff"]}


@pytest.fixture(scope="module")
def hub_db():
    """The hub's own database schema, with users and groups, for its ``has_scope``."""
    db = orm.new_session_factory("sqlite://")()
    users = {name: orm.User(name=name) for name in GROUPS}
    groups = {name: orm.Group(name=name) for name in ("students", "staff")}
    db.add_all([*users.values(), *groups.values()])
    for user, names in GROUPS.items():
        for name in names:
            groups[name].users.append(users[user])
    db.commit()
    yield db
    db.close()


@pytest.mark.parametrize("raw", TOKENS, ids=lambda raw: ",".join(raw))
def test_may_stop_agrees_with_the_hubs_own_check(hub_db, raw):
    scopes = expand_scopes(raw)  # what the hub puts in the user model
    viewer = Viewer("someone", scopes=frozenset(scopes))
    for user, server in TARGETS:
        hub_says = bool(has_scope(f"delete:servers!server={user}/{server}", scopes, db=hub_db))
        assert viewer.may_stop(user, server, GROUPS[user]) is hub_says, (raw, user, server)


def test_may_stop_without_the_users_groups_does_not_guess_from_a_group_filter():
    viewer = Viewer("teacher", scopes=frozenset({"delete:servers!group=students"}))
    assert viewer.may_stop_servers and viewer.stop_groups == {"students"}
    assert not viewer.may_stop("ada", "")
    assert viewer.may_stop("ada", "", ["students"])


def test_being_an_admin_or_seeing_everyone_is_not_stopping_or_changing_budgets():
    admin = Viewer("admin", admin=True, scopes=frozenset({ACCESS, "read:users"}))
    auditor = Viewer("carol", scopes=frozenset({ACCESS, READ_ALL_SCOPE}))
    for viewer in (admin, auditor):
        assert viewer.sees_everyone
        assert not viewer.may_stop_servers and not viewer.may_stop("ada", "")
        assert not viewer.may_change_budgets
    assert Viewer("x", scopes=frozenset({BUDGETS_SCOPE})).may_change_budgets
    # a filtered custom scope is not the whole scope
    assert not Viewer("x", scopes=frozenset({BUDGETS_SCOPE + "!user=x"})).may_change_budgets


# --- the hub's configuration ------------------------------------------------------------


def test_the_meter_asks_for_delete_servers_not_servers():
    assert set(METER_SCOPES) == {"delete:servers", "users:activity", "read:users:groups"}
    assert sorted(meter_role()["scopes"]) == sorted(METER_SCOPES)


def test_setup_meter_grants_budgets_to_the_admins_and_asks_oauth_for_the_action_scopes():
    from traitlets.config import Config

    c = Config()
    c.Authenticator.admin_users = {"admin"}
    c.JupyterHub.load_roles = [{"name": "admin", "users": ["root"], "groups": ["ops"]}]
    setup_meter(c, "/etc/jupyterhub/jupyterhub_config.py", budget_users=["finance"])
    (service,) = c.JupyterHub.services
    assert set(service["oauth_client_allowed_scopes"]) == {
        READ_ALL_SCOPE,
        BUDGETS_SCOPE,
        "delete:servers",
    }
    roles = {role["name"]: role for role in c.JupyterHub.load_roles}
    assert roles[BUDGETS_ROLE] == budgets_role(["admin", "finance", "root"], ["ops"])
    assert roles[BUDGETS_ROLE]["scopes"] == [BUDGETS_SCOPE, ACCESS]
    assert roles["gpu-meter"]["scopes"] == sorted(METER_SCOPES)
    assert set(c.JupyterHub.custom_scopes) == {READ_ALL_SCOPE, BUDGETS_SCOPE}


# --- over HTTP ---------------------------------------------------------------------------

TOKEN_MODELS = {
    # an admin's token created with {"scopes": [access, read:users]}: the admin flag stays
    "admin-readonly-token": {
        "kind": "user",
        "name": "admin",
        "admin": True,
        "scopes": [ACCESS, "read:users", "read:users:name!user=admin"],
    },
    # ada's full token or OAuth login: her 'self' scopes include delete:servers!user=ada
    "ada-self-token": {
        "kind": "user",
        "name": "ada",
        "scopes": sorted(expand_scopes(["servers!user=ada"]) | {ACCESS}),
    },
    "ada-train-token": {
        "kind": "user",
        "name": "ada",
        "scopes": [ACCESS, "delete:servers!server=ada/train"],
    },
    "teacher-token": {
        "kind": "user",
        "name": "teacher",
        "scopes": [ACCESS, READ_ALL_SCOPE, "delete:servers!group=students"],
    },
}


class HubAPI:
    """The hub's answers the service asks for: stops, and users' groups."""

    def __init__(self):
        self.stopped = []
        self.groups = {"ada": ["students"], "bob": []}
        self.failure = None  # an exception user_groups raises

    async def stop_server(self, user, server=""):
        self.stopped.append((user, server))
        return 202

    async def user_groups(self, user):
        if self.failure is not None:
            raise self.failure
        if user not in self.groups:
            raise HTTPClientError(404, "Not Found")
        return self.groups[user]


@pytest.fixture
async def app(meter, monkeypatch):  # noqa: F811 (meter: the fixture imported above)
    for token, model in TOKEN_MODELS.items():
        monkeypatch.setitem(MODELS, token, model)
    server, app = serve_app(meter, hub_api=HubAPI())
    yield app
    server.stop()


def stop(app, token, user, server="", **extra):
    form = urlencode({"user": user, "server": server, **extra})
    return fetch(app, "admin/stop", token, method="POST", body=form, ok=False)


async def test_an_admins_read_only_token_cannot_stop_or_change_anything(app):
    token = "admin-readonly-token"
    response = await stop(app, token, "ada", "train")
    assert response.code == 403 and "delete:servers" in body(response)["message"]
    changes = [
        ("PUT", "api/budgets/user/ada", {"amount": "5"}),
        ("DELETE", "api/budgets/user/ada", None),
        ("POST", "api/budgets/user/ada/grants", {"amount": "5"}),
    ]
    for method, path, payload in changes:
        response = await fetch(
            app, path, token, method=method, body=payload and json.dumps(payload), ok=False
        )
        assert response.code == 403, (method, path)
        assert BUDGETS_SCOPE in body(response)["message"]
    form = urlencode({"action": "set", "scope": "user", "name": "ada", "amount": "5"})
    response = await fetch(app, "admin/budget", token, method="POST", body=form, ok=False)
    assert response.code == 403
    # what the token may do, it still does: read everyone, as an admin
    page = (await fetch(app, "admin", token)).body.decode()
    assert 'data-user="bob"' in page
    assert "gpu-meter-stop" not in page and 'id="budget-form"' not in page
    assert body(await fetch(app, "api/budgets", token))["budgets"] == []
    assert app.hub_api.stopped == []


async def test_the_same_admins_full_token_stops_and_changes(app):
    assert (await stop(app, "admin-token", "ada", "train")).code == 202
    put = await fetch(
        app, "api/budgets/user/ada", "admin-token", method="PUT", body='{"amount": "5"}'
    )
    assert body(put)["budget"]["updated_by"] == "admin"
    assert app.hub_api.stopped == [("ada", "train")]


async def test_a_user_stops_her_own_servers_and_no_one_elses(app):
    page = (await fetch(app, "", "ada-self-token")).body.decode()
    row = re.search(r'<tr data-session-id="\d+">.*?</tr>', page, re.S).group(0)
    assert "gpu-meter-stop" in row and 'name="server" value="train"' in row
    assert 'name="back" value="usage"' in row
    assert "gpu-meter-stop" not in (await fetch(app, "", "ada-token")).body.decode()

    response = await stop(app, "ada-self-token", "bob")
    assert response.code == 403
    assert body(response)["message"].startswith("ada may not stop bob/: that needs the scope")
    assert (await stop(app, "ada-self-token", "ada", "train")).code == 202
    assert app.hub_api.stopped == [("ada", "train")]
    # her page does not make her an admin
    assert (await fetch(app, "admin", "ada-self-token", ok=False)).code == 403


async def test_a_server_filter_stops_that_server_only(app):
    assert (await stop(app, "ada-train-token", "ada", "")).code == 403
    assert (await stop(app, "ada-train-token", "ada", "train")).code == 202
    assert app.hub_api.stopped == [("ada", "train")]


async def test_a_group_filter_stops_the_groups_members_as_the_hub_says_them(app):
    page = (await fetch(app, "admin?since=", "teacher-token")).body.decode()
    stop_buttons = re.findall(r'name="user" value="([^"]+)"', page)
    assert stop_buttons == ["ada"]  # ada (a student) runs train; no one else's
    assert (await stop(app, "teacher-token", "bob")).code == 403
    assert (await stop(app, "teacher-token", "nobody")).code == 403  # the hub: 404
    assert (await stop(app, "teacher-token", "ada", "train")).code == 202
    assert app.hub_api.stopped == [("ada", "train")]


@pytest.mark.parametrize(
    "failure, reason",
    [
        (HTTPClientError(500, "Internal Server Error"), "500 Internal Server Error"),
        (ConnectionRefusedError(111, "Connection refused"), "Connection refused"),
    ],
)
async def test_a_hub_that_cannot_say_the_groups_is_a_503_and_hides_only_the_buttons(
    app, failure, reason
):
    app.hub_api.failure = failure
    response = await stop(app, "teacher-token", "ada", "train")
    assert response.code == 503
    message = body(response)["message"]
    assert "which groups ada is in" in message and reason in message
    assert app.hub_api.stopped == []
    page = await fetch(app, "admin?since=", "teacher-token")
    assert page.code == 200 and "gpu-meter-stop" not in page.body.decode()


async def test_the_usage_pages_stop_form_goes_back_to_the_usage_page(app):
    browser, token = await logged_in_browser(app, "ada-self-token", "")
    form = {"user": "ada", "server": "train", "back": "usage", "_xsrf": token}
    response = await fetch(
        app, "admin/stop", method="POST", body=urlencode(form), headers=browser, ok=False
    )
    assert response.code == 303
    assert response.headers["Location"] == PREFIX + "?stopped=stopping+ada%2Ftrain"
    shown = (await fetch(app, "?stopped=stopping+ada%2Ftrain", headers=browser)).body.decode()
    assert 'id="gpu-meter-stopped"' in shown and "stopping ada/train" in shown


@pytest.mark.parametrize(
    "path, token",
    [
        ("", "ada-token"),
        ("admin", "admin-token"),
        ("admin", "ada-token"),  # the 403 page
        ("", None),  # the redirect to the hub's login
    ],
)
async def test_no_page_of_the_service_may_be_framed(app, path, token):
    response = await fetch(app, path, token, headers={"Accept": "text/html"}, ok=False)
    assert response.code in (200, 302, 403)
    assert response.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert response.headers["X-Frame-Options"] == "DENY"


def test_the_meter_reads_the_config_with_the_hubs_own_settings_from_the_environment(
    monkeypatch,
):
    """The shipped config takes the image from $JUPYTER_GPU_METER_IMAGE: the meter (which
    copies snapshots with that image) must see the value the hub's spawner sees."""
    monkeypatch.setenv("JUPYTER_GPU_METER_IMAGE", "example/pytorch:2.9")
    monkeypatch.setenv("JUPYTER_GPU_METER_DOCKER_NETWORK", "gpu-notebooks")
    monkeypatch.setenv("UNRELATED_SECRET", "not for the meter")
    env = hubconfig.meter_service("/srv/jupyterhub_config.py")["environment"]
    assert env["JUPYTER_GPU_METER_IMAGE"] == "example/pytorch:2.9"
    assert env["JUPYTER_GPU_METER_DOCKER_NETWORK"] == "gpu-notebooks"
    assert "UNRELATED_SECRET" not in env
    assert env["JUPYTER_GPU_METER_HUB_ID"] == default_hub_id()
