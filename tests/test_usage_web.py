"""The meter's pages, API, CSV and /metrics over HTTP, without a hub.

The real web app (create_application) on a real SQLite ledger; only the hub's
answer to "whose token is this?" is injected (a HubOAuth that knows the
tokens below). End-to-end tests through a real hub are in test_e2e_api.py
and test_e2e_pages.py.
"""

import csv
import io
import json
import re
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
import yaml
from jupyterhub.services.auth import HubOAuth
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from jupyter_gpu_meter import usage
from jupyter_gpu_meter.budgets import budget_view
from jupyter_gpu_meter.ledger import Ledger, RollupRow
from jupyter_gpu_meter.pricing import Pricing
from jupyter_gpu_meter.sampler import GPUReading, Tick
from jupyter_gpu_meter.service import create_application
from jupyter_gpu_meter.service.auth import BUDGETS_SCOPE, READ_ALL_SCOPE
from jupyter_gpu_meter.service.charts import bar_chart_svg
from jupyter_gpu_meter.service.reader import LiveState, UsagePages, UsageReader
from jupyter_gpu_meter.service.state import MeterState
from jupyter_gpu_meter.sessions import ManagedContainer, Opening, SessionChanges

DOCS = Path(__file__).resolve().parent.parent / "docs"
PREFIX = "/services/gpu-meter/"
ACCESS = "access:services!service=gpu-meter"
H100 = "NVIDIA H100 80GB HBM3"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
HOSTILE = "<img src=x onerror=alert(1)>"
MODELS = {
    "ada-token": {"kind": "user", "name": "ada", "admin": False, "scopes": [ACCESS]},
    "bob-token": {"kind": "user", "name": "bob", "admin": False, "scopes": [ACCESS]},
    # an admin's full token: what the hub gives (admin:servers includes delete:servers)
    "admin-token": {
        "kind": "user",
        "name": "admin",
        "admin": True,
        "scopes": [ACCESS, "admin:servers", "servers", "delete:servers", BUDGETS_SCOPE],
    },
    "auditor-token": {"kind": "user", "name": "carol", "scopes": [ACCESS, READ_ALL_SCOPE]},
    "hostile-token": {"kind": "user", "name": HOSTILE, "scopes": [ACCESS]},
    "prometheus-token": {
        "kind": "service",
        "name": "prometheus",
        "scopes": ["read:metrics", READ_ALL_SCOPE],
    },
    "outsider-token": {"kind": "user", "name": "eve", "scopes": ["self"]},
}


class KnownTokens(HubOAuth):
    """HubOAuth whose hub is a dict: token -> user model (no HTTP); `models` names it."""

    models = MODELS

    @classmethod
    def for_tests(cls, **extra):
        """One set up as the service's HubOAuth under the hub (`extra`: access_scopes...)."""
        return cls(
            api_token="service-token",
            oauth_client_id="service-gpu-meter",
            api_url="http://127.0.0.1:9/hub/api",
            hub_prefix="/hub/",
            base_url=PREFIX,
            **extra,
        )

    def user_for_token(self, token, use_cache=True, session_id="", *, sync=True):
        model = self.models.get(token)
        model = json.loads(json.dumps(model)) if model else None  # a fresh copy, as from HTTP

        async def answer():
            return model

        return model if sync else answer()


class FakeHubAPI:
    def __init__(self):
        self.stopped = []

    async def stop_server(self, user, server=""):
        self.stopped.append((user, server))
        return 202


def add_session(ledger, pricing, user, start, end=None, *, gpus=1, server="", reason="stopped"):
    container_id = f"{abs(hash((user, start, server))):064x}"[-64:]
    ledger.open_session(
        container_id=container_id,
        user=user,
        server=server,
        gpu_uuids=[f"GPU-{user}-{i}" for i in range(gpus)],
        gpu_model=H100 if gpus else "",
        profile="gpu-1" if gpus else "cpu",
        price=pricing.snapshot(H100, gpus),
        started_at=start,
    )
    if end is not None:
        ledger.close_session(container_id, ended_at=end, reason=reason)
    return container_id


@pytest.fixture
async def meter(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.sqlite")
    ledger.upgrade()
    pricing = Pricing(prices={H100: "2.49"}, cpu_price="0.10", currency="EUR")
    day = timedelta(days=1)
    ada_done = add_session(
        ledger, pricing, "ada", NOW - 8 * day, NOW - 8 * day + timedelta(hours=2)
    )
    ledger.add_rollups(
        [
            RollupRow(
                ada_done, "GPU-ada-0", NOW - 8 * day + timedelta(minutes=m), "w", 60, 70.0, 90, 1
            )
            for m in range(3)
        ]
    )
    add_session(
        ledger, pricing, "ada", NOW - 2 * day, NOW - 2 * day + timedelta(minutes=30), gpus=0
    )
    ada_running = add_session(ledger, pricing, "ada", NOW - timedelta(hours=1), server="train")
    add_session(ledger, pricing, "bob", NOW - 3 * day, NOW - 3 * day + timedelta(hours=5), gpus=2)
    add_session(ledger, pricing, "=SUM(A1)", NOW - 40 * day, NOW - 40 * day + timedelta(hours=1))
    add_session(ledger, pricing, HOSTILE, NOW - day, NOW - day + timedelta(hours=1))
    # the meter's own state, as its event loop fills it: one running server, one sample
    state = MeterState()
    container = ManagedContainer(
        ada_running, "ada", "train", ("GPU-A",), H100, "gpu-1", None, True, NOW, None, None
    )
    state.apply(SessionChanges(opened=(Opening(container, NOW, pricing.snapshot(H100, 1)),)))
    gpus = (
        GPUReading("GPU-A", 0, H100, 81, 10 << 30, 80 << 30, 310.5, 61),
        GPUReading("GPU-B", 1, H100, 0, 0, 80 << 30, 70.0, 40),
        GPUReading("GPU-C", 2, H100, None, 0, 80 << 30, healthy=False, problem="GPU is lost"),
    )
    state.sampled(Tick(NOW, gpus, (), 0.0042))
    meter = SimpleNamespace(
        ledger=ledger,
        pricing=pricing,
        state=state,
        health=lambda: {"gpu_sampling": "on", "pending_writes": 0, **state.health()},
        # as MeterService.budget_view, at the test's clock
        budget_view=lambda user: budget_view(ledger.user_budget_status(user, [], NOW), 0.8),
    )
    yield meter
    ledger.close()


def serve_app(meter, *, hub_auth=None, hub_api=None, **pieces):
    """The real web app of `meter` on a free port, at NOW: (its server, what tests use).

    `hub_auth` answers "whose token is this?" (default: :data:`MODELS`, with the
    access scope), `hub_api` takes the stops (default: a :class:`FakeHubAPI`);
    `pieces` go to ``create_application`` as they are (e.g. ``homes=``).
    """
    hub_api = hub_api or FakeHubAPI()
    hub_auth = hub_auth or KnownTokens.for_tests(access_scopes={ACCESS})
    live = LiveState(meter.state, health=meter.health)
    application = create_application(
        meter,
        PREFIX,
        hub_auth=hub_auth,
        hub_api=hub_api,
        clock=lambda: NOW,
        live=live,
        **pieces,
    )
    sock, port = bind_unused_port()
    server = HTTPServer(application)
    server.add_sockets([sock])
    return server, SimpleNamespace(
        url=f"http://127.0.0.1:{port}{PREFIX}",
        hub_api=hub_api,
        hub_auth=hub_auth,
        meter=meter,
        application=application,
    )


@pytest.fixture
async def app(meter):
    server, app = serve_app(meter)
    yield app
    server.stop()


async def fetch(app, path, token=None, *, method="GET", body=None, headers=None, ok=True):
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"token {token}"
    try:
        response = await AsyncHTTPClient().fetch(
            app.url + path, method=method, body=body, headers=headers, follow_redirects=False
        )
    except HTTPClientError as e:
        if ok:
            body = e.response.body if e.response else ""
            raise AssertionError(f"{path}: {e.code} {body}") from None
        return e.response
    return response


def body(response):
    return json.loads(response.body)


def expected_totals(ledger, user, *, since=None, until=None):
    sessions = ledger.sessions(user=user)
    storage = ledger.storage_sums(user=user, since=since, until=until)
    efficiency = ledger.efficiency_by_user(user=user, since=since, until=until)
    totals = usage.totals(
        sessions, now=NOW, since=since, until=until, storage=storage, efficiency=efficiency
    )
    return totals.to_json("EUR")


# --- api/usage ---------------------------------------------------------------------------


async def test_a_user_gets_their_own_usage_as_the_ledger_has_it(app):
    ledger = app.meter.ledger
    data = body(await fetch(app, "api/usage", "ada-token"))
    assert data["user"] == "ada" and data["as_of"] == "2026-11-20T12:00:00Z"
    assert data["all_time"] == expected_totals(ledger, "ada")
    month = usage.month_start(NOW)
    assert data["this_month"] == {
        "since": "2026-11-01T00:00:00Z",
        **expected_totals(ledger, "ada", since=month),
    }
    # 2 h and 1 h so far of 1 GPU at 2.49 EUR, 30 min CPU at 0.10 EUR
    assert data["all_time"]["charges"] == [
        {"amount": "7.520000", "currency": "EUR", "text": "7.52 EUR"}
    ]
    assert data["all_time"]["charges_text"] == "7.52 EUR"
    assert data["all_time"]["gpu_hours"] == "3.000000"
    assert data["all_time"]["gpu_hours_text"] == "3.00"
    (running,) = data["running"]
    assert running["server"] == "train" and running["running"] is True
    assert running["charge"] == {"amount": "2.490000", "currency": "EUR", "text": "2.49 EUR"}
    assert running["duration_text"] == "1 h"
    # the price as the spawn form says it, from the one rate formatter
    assert running["price_text"] == "2.49 EUR/hour"
    sessions = data["sessions"]
    assert sessions["total"] == 3 and [s["running"] for s in sessions["items"]] == [
        True,
        False,
        False,
    ]  # newest first
    done = sessions["items"][2]
    assert done["utilization_avg"] == 70.0 and done["utilization"] == [70.0, 70.0, 70.0]
    assert done["end_reason"] == "stopped"
    days = {d["date"]: d["gpu_hours"] for d in data["daily_gpu_hours"]}
    assert len(days) == 30 and days["2026-11-12"] == "2.000000" and days["2026-11-20"] == "1.000000"
    assert data["budget"] is None


async def test_others_usage_only_for_admins_and_read_all_holders(app):
    response = await fetch(app, "api/usage?user=bob", "ada-token", ok=False)
    assert response.code == 403
    assert "ada may see only their own usage" in body(response)["message"]
    for token in ("admin-token", "auditor-token"):
        data = body(await fetch(app, "api/usage?user=bob", token))
        assert data["user"] == "bob"
        assert data["all_time"] == expected_totals(app.meter.ledger, "bob")


async def test_range_and_pages_of_the_history(app):
    since = "2026-11-15"
    data = body(await fetch(app, f"api/usage?since={since}&limit=1", "ada-token"))
    assert data["since"] == "2026-11-15T00:00:00Z" and data["until"] is None
    assert data["sessions"]["total"] == 2 and data["sessions"]["next_offset"] == 1
    assert data["totals"] == expected_totals(app.meter.ledger, "ada", since=usage.parse_time(since))
    second = body(await fetch(app, f"api/usage?since={since}&limit=1&offset=1", "ada-token"))
    assert second["sessions"]["next_offset"] is None
    assert second["sessions"]["items"][0]["gpus"] == 0


@pytest.mark.parametrize(
    "query, message",
    [
        ("since=yesterday", "since='yesterday' is not an ISO 8601 date or time"),
        ("limit=lots", "limit='lots' is not a whole number from 0 to 1000"),
        ("limit=1001", "limit='1001' is not a whole number from 0 to 1000"),
        ("offset=-2", "offset='-2' is not a whole number from 0 to 2147483647"),
        ("since=2026-11-02&until=2026-11-01", "is not before until"),
    ],
)
async def test_bad_arguments_are_a_400_in_json_that_says_what_is_allowed(app, query, message):
    response = await fetch(app, "api/usage?" + query, "ada-token", ok=False)
    assert response.code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    assert message in body(response)["message"]


async def test_an_unknown_api_path_is_a_json_404_naming_the_api(app):
    response = await fetch(app, "api/sessions", "ada-token", ok=False)
    assert response.code == 404 and "use api/usage, api/users" in body(response)["message"]


async def test_without_a_token_or_the_scope_the_api_says_403_in_json(app):
    response = await fetch(app, "api/usage", ok=False)
    assert response.code == 403 and "Authorization: token" in body(response)["message"]
    response = await fetch(app, "api/usage", "outsider-token", ok=False)
    assert response.code == 403
    assert "eve may not use this: it needs the scope " + ACCESS in body(response)["message"]
    response = await fetch(app, "api/usage", "no-such-token", ok=False)
    assert response.code == 403


# --- api/users -----------------------------------------------------------------------------


async def test_users_is_for_admins_sorted_and_paged_with_grand_totals(app):
    response = await fetch(app, "api/users", "ada-token", ok=False)
    assert response.code == 403
    assert READ_ALL_SCOPE in body(response)["message"]
    data = body(await fetch(app, "api/users?since=&sort=gpu_hours&limit=2", "admin-token"))
    ledger = app.meter.ledger
    users = data["users"]
    assert users["total"] == 4 and users["next_offset"] == 2
    assert [u["user"] for u in users["items"]] == ["bob", "ada"]  # 10 and 3 GPU-hours
    assert users["items"][1]["running_servers"] == ["train"]
    bob = users["items"][0]
    expected = expected_totals(ledger, "bob")
    assert {k: bob[k] for k in expected} == expected
    efficiency = ledger.efficiency_by_user(since=None, until=None)
    everyone = usage.totals(ledger.sessions(), now=NOW, efficiency=efficiency).to_json("EUR")
    assert data["totals"] == {"users": 4, **everyone}
    by_name = body(await fetch(app, "api/users?sort=user&order=asc", "auditor-token"))
    assert [u["user"] for u in by_name["users"]["items"]] == sorted(
        ["ada", "bob", "=SUM(A1)", HOSTILE]
    )
    response = await fetch(app, "api/users?sort=cost", "admin-token", ok=False)
    assert response.code == 400 and "sort='cost' is not one of" in body(response)["message"]


# --- api/gpus --------------------------------------------------------------------------------


async def test_gpus_show_holders_and_readings_to_admins_and_to_the_holder_only(app):
    gpus = body(await fetch(app, "api/gpus", "admin-token"))["gpus"]
    assert [g["uuid"] for g in gpus] == ["GPU-A", "GPU-B", "GPU-C"]
    assert gpus[0]["holder"] == {"user": "ada", "server": "train", "since": "2026-11-20T12:00:00Z"}
    assert gpus[0]["utilization"] == 81 and gpus[0]["memory_used_bytes"] == 10 << 30
    assert gpus[1]["allocated"] is False and gpus[1]["holder"] is None
    assert gpus[2]["healthy"] is False and gpus[2]["problem"] == "GPU is lost"
    own = body(await fetch(app, "api/gpus", "ada-token"))["gpus"]
    assert own[0]["holder"]["user"] == "ada" and own[0]["utilization"] == 81
    other = body(await fetch(app, "api/gpus", "bob-token"))["gpus"]
    assert other[0]["allocated"] is True and other[0]["holder"] is None
    assert other[0]["utilization"] is None and other[0]["power_watts"] is None
    assert other[1]["utilization"] == 0  # a free GPU's readings are no one's usage


# --- api/export.csv ----------------------------------------------------------------------------


def rows_of(response):
    return list(csv.DictReader(io.StringIO(response.body.decode())))


async def test_export_gives_users_their_own_lines_and_admins_everyones(app):
    ledger = app.meter.ledger
    own = await fetch(app, "api/export.csv", "ada-token")
    assert own.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in own.headers["Content-Disposition"]
    rows = rows_of(own)
    assert {r["user"] for r in rows} == {"ada"} and own.headers["X-Total-Count"] == "3"
    assert rows[-1]["ended_at"] == "" and rows[-1]["billed_until"] == "2026-11-20T12:00:00Z"
    expected = usage.export_rows(ledger.sessions(user="ada"), now=NOW)
    assert [r["charge"] for r in rows] == [r["charge"] for r in expected]
    assert (await fetch(app, "api/export.csv?user=bob", "ada-token", ok=False)).code == 403

    everyone = await fetch(app, "api/export.csv?since=2026-11-01&limit=2", "admin-token")
    assert everyone.headers["X-Total-Count"] == "5"
    assert len(rows_of(everyone)) == 2
    assert 'offset=2>; rel="next"' in everyone.headers["Link"]
    formula = rows_of(await fetch(app, "api/export.csv?since=2026-10-01", "admin-token"))
    assert "'=SUM(A1)" in {r["user"] for r in formula}  # never a formula in a spreadsheet


# --- /metrics ----------------------------------------------------------------------------------


async def test_metrics_need_read_metrics_and_follow_prometheus_naming(app):
    for token in (None, "ada-token"):
        response = await fetch(app, "metrics", token, ok=False)
        assert response.code == 403
    text = (await fetch(app, "metrics", "prometheus-token")).body.decode()
    assert 'jupyter_gpu_meter_gpu_utilization_ratio{index="0",model="' + H100 in text
    assert re.search(r'gpu_utilization_ratio\{[^}]*uuid="GPU-A"\} 0\.81', text)
    assert re.search(r'gpu_allocated\{[^}]*uuid="GPU-A"\} 1\.0', text)
    assert re.search(r'gpu_power_watts\{[^}]*uuid="GPU-A"\} 310\.5', text)
    assert (
        'jupyter_gpu_meter_gpu_holder_info{node="",server="train",user="ada",uuid="GPU-A"} 1.0'
        in text
    )
    assert "# TYPE jupyter_gpu_meter_user_gpu_seconds_total counter" in text
    assert 'jupyter_gpu_meter_user_gpu_seconds_total{user="bob"} 36000.0' in text
    assert 'jupyter_gpu_meter_user_charges_total{currency="EUR",user="ada"} 7.52' in text
    assert "jupyter_gpu_meter_sampler_tick_duration_seconds 0.0042" in text
    assert 'jupyter_gpu_meter_running_sessions{node=""} 1.0' in text
    # every metric the shipped Grafana dashboard and the docs name is one we serve
    served = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    for path in (DOCS / "grafana" / "gpu-meter-dashboard.json", DOCS / "reference" / "metrics.md"):
        named = set(re.findall(r"jupyter_gpu_meter_[a-z_]+", path.read_text()))
        # (the nodes' series are served in cluster mode only: test_node_views.py)
        named -= {
            f"jupyter_gpu_meter_node_{name}"
            for name in ("last_heartbeat_timestamp_seconds", "lost")
        }
        assert named and named <= served, (path, named - served)


# --- pages -------------------------------------------------------------------------------------


async def test_pages_send_a_browser_without_login_to_the_hubs_oauth(app):
    response = await fetch(app, "", ok=False)
    assert response.code == 302
    assert response.headers["Location"].startswith("/hub/api/oauth2/authorize?")
    assert "client_id=service-gpu-meter" in response.headers["Location"]


async def test_user_page_escapes_everything_and_embeds_json_safely(app):
    page = (await fetch(app, "", "hostile-token")).body.decode()
    assert HOSTILE not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    live = re.search(
        r'<script id="gpu-meter-live" type="application/json">(.*?)</script>', page, re.S
    )
    assert "<" not in live.group(1) and json.loads(live.group(1))["url"].startswith(PREFIX)
    assert "/hub/static/css/style.min.css" in page  # the hub's own CSS
    assert 'id="gpu-meter-nav-link"' in page  # and its navigation bar, with our link


async def test_user_page_shows_the_ledgers_numbers(app):
    page = (await fetch(app, "", "ada-token")).body.decode()
    assert re.search(r'id="all-charges">7\.52 EUR<', page)
    assert re.search(r'id="all-gpu-hours">3\.00<', page)
    assert re.search(r'data-label="Price" class="text-nowrap">2\.49 EUR/hour<', page)
    assert 'class="gpu-meter-sparkline"' in page
    assert 'class="gpu-meter-chart"' in page
    assert "GPU-hours per day, last 30 days" in page
    assert 'id="gpu-meter-budget"' not in page  # no budgets yet: nothing shown


async def test_long_lists_are_paged_on_the_user_and_admin_pages(app):
    """One item a page: the pager says where it is and links to its neighbours."""
    reader = UsageReader(
        app.meter.ledger,
        currency="EUR",
        settings=UsagePages(history_page_size=1, users_page_size=1),
        clock=lambda: NOW,
    )
    paged = create_application(
        app.meter,
        PREFIX,
        hub_auth=app.hub_auth,
        hub_api=app.hub_api,
        reader=reader,
        live=LiveState(app.meter.state, health=app.meter.health),
    )
    sock, port = bind_unused_port()
    server = HTTPServer(paged)
    server.add_sockets([sock])
    small = SimpleNamespace(url=f"http://127.0.0.1:{port}{PREFIX}")
    try:
        first = (await fetch(small, "", "ada-token")).body.decode()
        assert 'aria-label="Session pages"' in first and "1–1 of 3" in first
        assert '<a class="page-link" href="#">Newer</a>' in first  # the newest: nothing newer
        assert '<a class="page-link" href="?offset=1">Older</a>' in first
        second = (await fetch(small, "?offset=1", "ada-token")).body.decode()
        assert "2–2 of 3" in second and 'href="?offset=0">Newer</a>' in second
        admin = (await fetch(small, "admin?since=&offset=1", "admin-token")).body.decode()
        assert 'aria-label="User pages"' in admin and "2–2 of " in admin
        assert ">Previous</a>" in admin and ">Next</a>" in admin
        unpaged = (await fetch(app, "", "ada-token")).body.decode()  # 25 a page: no pager
        assert 'aria-label="Session pages"' not in unpaged
    finally:
        server.stop()
        reader.close()


async def test_admin_page_is_403_for_users_and_lists_everyone_for_admins(app):
    response = await fetch(app, "admin", "ada-token", ok=False)
    assert response.code == 403
    assert "the admin page is for hub admins" in response.body.decode()
    page = (await fetch(app, "admin?since=", "admin-token")).body.decode()
    for name in ("ada", "bob", "&lt;img src=x onerror=alert(1)&gt;"):
        assert f'data-user="{name}"' in page
    assert HOSTILE not in page
    assert 'name="_xsrf"' in page and "admin/stop" in page
    auditor = (await fetch(app, "admin", "auditor-token")).body.decode()
    assert "admin/stop" not in auditor  # seeing everyone is not stopping anyone


async def test_stop_needs_delete_servers_and_goes_through_the_hub_api(app):
    form = urlencode({"user": "ada", "server": "train"})
    response = await fetch(app, "admin/stop", "auditor-token", method="POST", body=form, ok=False)
    assert response.code == 403 and app.hub_api.stopped == []
    response = await fetch(app, "admin/stop", "admin-token", method="POST", body=form)
    assert response.code == 202 and app.hub_api.stopped == [("ada", "train")]


async def logged_in_browser(app, token: str, page: str) -> tuple[dict, str]:
    """The headers of a browser logged in through the hub's OAuth as `token`'s owner
    (the service's signed cookie holds the token) that has loaded `page`, and the
    XSRF token of that page's forms."""
    cookie = web.create_signed_value(
        app.application.settings["cookie_secret"], app.hub_auth.cookie_name, token
    ).decode()
    browser = {"Cookie": f"{app.hub_auth.cookie_name}={cookie}", "Sec-Fetch-Mode": "navigate"}
    loaded = await fetch(app, page, headers=browser)
    xsrf_cookie = re.search(r"_xsrf=([^;]+)", loaded.headers["Set-Cookie"]).group(1)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', loaded.body.decode()).group(1)
    browser["Cookie"] += f"; _xsrf={xsrf_cookie}"
    return browser, xsrf


async def test_the_stop_form_works_with_the_pages_xsrf_token_and_not_without(app):
    browser, token = await logged_in_browser(app, "admin-token", "admin")
    form = {"user": "ada", "server": "train"}

    forged = await fetch(
        app, "admin/stop", method="POST", body=urlencode(form), headers=browser, ok=False
    )
    assert forged.code == 403 and app.hub_api.stopped == []  # cookie alone: not logged in
    response = await fetch(
        app,
        "admin/stop",
        method="POST",
        body=urlencode({**form, "_xsrf": token}),
        headers=browser,
        ok=False,
    )
    assert response.code == 303
    assert response.headers["Location"] == PREFIX + "admin?stopped=stopping+ada%2Ftrain"
    assert app.hub_api.stopped == [("ada", "train")]

    # the pages' own fetches: cookie plus the X-XSRFToken header
    fetch_mode = {**browser, "Sec-Fetch-Mode": "cors"}
    assert (await fetch(app, "api/gpus", headers=fetch_mode, ok=False)).code == 403
    allowed = await fetch(app, "api/gpus", headers={**fetch_mode, "X-XSRFToken": token})
    assert body(allowed)["gpus"][0]["holder"]["user"] == "ada"


async def test_openapi_document_describes_every_api_route(app):
    document = yaml.safe_load((await fetch(app, "api/openapi.yaml")).body)
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) >= {
        "/api/usage",
        "/api/users",
        "/api/gpus",
        "/api/export.csv",
        "/metrics",
        "/admin/stop",
        "/api/budgets",
        "/api/budgets/{scope}/{name}",
        "/api/budgets/{scope}/{name}/grants",
        "/api/budgets/{scope}/{name}/changes",
    }


def test_money_is_exact_until_rounded_for_people():
    assert usage.money(Decimal("2.49") * 7 / 3600, "USD") == {
        "amount": "0.004842",
        "currency": "USD",
        "text": "0.00 USD",
    }
    assert usage.format_money(Decimal("1234.565"), "USD") == "1,234.57 USD"
    assert usage.format_money(Decimal("1234.5"), "JPY") == "1,235 JPY"


# --- api/budgets -------------------------------------------------------------------------


async def test_admins_set_grant_show_and_remove_budgets_and_each_change_is_recorded(app):
    put = await fetch(
        app,
        "api/budgets/user/ada",
        "admin-token",
        method="PUT",
        body=json.dumps({"amount": "50", "currency": "EUR"}),
    )
    assert body(put)["budget"] | {"updated_at": None} == {
        "scope": "user",
        "name": "ada",
        "amount": "50.000000",
        "unit": "money",
        "currency": "EUR",
        "period": "month",
        "updated_at": None,
        "updated_by": "admin",
    }
    grant = await fetch(
        app,
        "api/budgets/user/ada/grants",
        "admin-token",
        method="POST",
        body=json.dumps({"amount": "10", "note": "deadline"}),
    )
    assert grant.code == 201 and body(grant)["grant"]["note"] == "deadline"
    listed = body(await fetch(app, "api/budgets", "auditor-token"))["budgets"]
    assert [(b["scope"], b["name"]) for b in listed] == [("user", "ada")]
    # ada sees her balance in api/usage: 50 + 10 granted this month, less this month's spend
    balance = body(await fetch(app, "api/usage", "ada-token"))["budget"]
    assert balance["of"] == {"amount": "60.000000", "currency": "EUR", "text": "60.00 EUR"}
    page = (await fetch(app, "", "ada-token")).body.decode()
    card = re.search(r'id="gpu-meter-budget".*?</div></div>', page, re.S).group(0)
    assert balance["left"]["text"] in card and "of 60.00 EUR" in card  # the API's words

    removed = await fetch(app, "api/budgets/user/ada", "admin-token", method="DELETE")
    assert body(removed)["removed"] == {"scope": "user", "name": "ada"}
    changes = body(await fetch(app, "api/budgets/user/ada/changes", "admin-token"))["changes"]
    assert [(c["change"], c["by"]) for c in changes] == [
        ("set", "admin"),
        ("grant", "admin"),
        ("remove", "admin"),
    ]


async def test_a_new_budget_is_in_the_hubs_currency(meter):
    meter.pricing = Pricing(currency="JPY")
    server, app = serve_app(meter)
    try:
        put = await fetch(
            app, "api/budgets/group/a", "admin-token", method="PUT", body='{"amount": "5000"}'
        )
        assert body(put)["budget"]["currency"] == "JPY"
        put = await fetch(
            app,
            "api/budgets/group/b",
            "admin-token",
            method="PUT",
            body='{"amount": "3", "unit": "gpu-hours"}',
        )
        assert body(put)["budget"]["currency"] is None
        form = {"action": "set", "scope": "group", "name": "c", "amount": "7000"}
        form = urlencode(form)
        await fetch(app, "admin/budget", "admin-token", method="POST", body=form, ok=False)
        currencies = {
            b["name"]: b["currency"]
            for b in body(await fetch(app, "api/budgets", "admin-token"))["budgets"]
        }
        assert currencies == {"a": "JPY", "b": None, "c": "JPY"}
        # the admin page writes each amount in its own unit: no decimals for a yen
        page = (await fetch(app, "admin", "admin-token")).body.decode()
        assert "5,000 JPY" in page and "7,000 JPY" in page and "3.00 GPU-hours" in page
        assert "5000.00" not in page
    finally:
        server.stop()


@pytest.mark.parametrize(
    "token, method, path, payload, status, message",
    [
        ("ada-token", "PUT", "api/budgets/user/ada", {"amount": "1"}, 403, BUDGETS_SCOPE),
        ("auditor-token", "DELETE", "api/budgets/user/ada", None, 403, BUDGETS_SCOPE),
        ("ada-token", "GET", "api/budgets", None, 403, "hub admins and holders"),
        ("admin-token", "PUT", "api/budgets/user/ada", {"amount": "-5"}, 400, "amount"),
        ("admin-token", "PUT", "api/budgets/user/ada", {"amt": "5"}, 400, "give 'amount'"),
        (
            "admin-token",
            "PUT",
            "api/budgets/user/ada",
            {"amount": "5", "period": "weekly"},
            400,
            "period",
        ),
        ("admin-token", "DELETE", "api/budgets/group/nobody", None, 404, "has no budget"),
        ("admin-token", "POST", "api/budgets/group/nobody/grants", {"amount": "5"}, 400, "budget"),
    ],
)
async def test_budget_api_errors_say_what_is_allowed(
    app, token, method, path, payload, status, message
):
    response = await fetch(
        app,
        path,
        token,
        method=method,
        body=None if payload is None and method in ("GET", "DELETE") else json.dumps(payload or {}),
        ok=False,
    )
    assert response.code == status
    assert message in body(response)["message"]


async def test_admin_page_lists_budgets_and_its_form_sets_and_grants(app):
    form = {"action": "set", "scope": "group", "name": "students", "amount": "50"}
    done = await fetch(
        app, "admin/budget", "admin-token", method="POST", body=urlencode(form), ok=False
    )
    assert done.code == 303 and "set+for+group+students%3A+done" in done.headers["Location"]
    refused = await fetch(
        app,
        "admin/budget",
        "admin-token",
        method="POST",
        body=urlencode({**form, "action": "grant", "amount": "-1"}),
        ok=False,
    )
    assert "not+done" in refused.headers["Location"]
    page = (await fetch(app, "admin?budget=set+for+group+students%3A+done", "admin-token")).body
    page = page.decode()
    assert "group <strong>students</strong>" in page and "50.00 EUR" in page
    assert 'id="budget-form"' in page and "set for group students: done" in page
    # read-all holders see the budgets but get no form, and may not post it
    assert 'id="budget-form"' not in (await fetch(app, "admin", "auditor-token")).body.decode()
    forbidden = await fetch(
        app, "admin/budget", "auditor-token", method="POST", body=urlencode(form), ok=False
    )
    assert forbidden.code == 403


@pytest.mark.parametrize(
    ("largest", "labels"),
    [
        (Decimal("0.0014"), ["0", "0.001", "0.002"]),
        (Decimal("0.024"), ["0", "0.0125", "0.025"]),
        (Decimal("3"), ["0", "2.5", "5"]),
        (Decimal("0"), ["0", "0.5", "1"]),
    ],
)
def test_the_daily_charts_axis_names_its_steps_even_for_a_few_gpu_minutes(largest, labels):
    """A minute on a GPU is 0.0167 GPU-hours: the axis must not read 0, 0, 0."""
    days = [date(2026, 11, 1) + timedelta(days=i) for i in range(3)]
    svg = str(bar_chart_svg([(days[0], Decimal(0)), (days[1], largest), (days[2], Decimal(0))]))
    axis = re.findall(r'<text x="32" [^>]*text-anchor="end"[^>]*>([^<]*)</text>', svg)
    assert axis == labels


def test_each_bar_carries_its_days_value_as_the_api_gives_it():
    """4782 s on a GPU is 1.328333… GPU-hours: the bar says what api/usage says, 1.328333."""
    days = [date(2026, 11, 1), date(2026, 11, 2)]
    hours = Decimal(4782) / Decimal(3600)
    svg = str(bar_chart_svg([(days[0], hours), (days[1], Decimal(0))]))
    values = dict(re.findall(r'data-day="([^"]+)" data-value="([^"]+)"', svg))
    assert values == {"2026-11-01": "1.328333", "2026-11-02": "0.000000"}
