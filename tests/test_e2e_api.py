"""The meter's JSON API, CSV and /metrics through a real hub, its proxy and its OAuth.

One hub for the module: a finished session of ada's from last week and one of
bob's are written into the meter's ledger (closed sessions only: the meter's
reconcile would close an open one whose container it does not know), ada's
server runs for real. Users' tokens come from the hub's API. Every number is
checked against the ledger, computed at the time (``as_of``) the API used.
"""

import csv
import io
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import requests

from jupyter_gpu_meter import usage
from jupyter_gpu_meter.hubconfig import read_all_role
from jupyter_gpu_meter.ledger import Ledger
from jupyter_gpu_meter.pricing import Pricing
from tests.hub import Hub, login
from tests.metering import add_closed_session, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

H100 = "NVIDIA H100 80GB HBM3"
PRICE = "36.00"  # per GPU-hour: a cent a second, so running costs move fast
#: how the sessions written into the ledger were priced
OLD = {"pricing": Pricing(prices={H100: PRICE}, currency="EUR"), "gpu_model": H100}
CONFIG = {
    "Pricing.prices": {H100: PRICE},
    "Pricing.currency": "EUR",
    # carol may read everyone's usage; test-admin may create users' tokens
    "JupyterHub.load_roles": [
        read_all_role(users=["carol"]),
        {"name": "test-tokens", "scopes": ["tokens"], "services": ["test-admin"]},
    ],
}


class Meter:
    """The meter behind the hub's proxy, as a script with a token sees it."""

    def __init__(self, hub, token):
        self.hub = hub
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"

    def get(self, path, **params):
        return self.session.get(self.hub.meter_url + path, params=params, timeout=30)

    def json(self, path, **params):
        response = self.get(path, **params)
        assert response.status_code == 200, (response.status_code, response.text)
        return response.json()


@pytest.fixture(scope="module")
def hub(tmp_path_factory, docker_client):
    hub = Hub(tmp_path_factory.mktemp("hub"), docker_client, f"2x{H100}", meter=True, **CONFIG)
    try:
        hub.start()
        wait_until(
            lambda: requests.get(hub.meter_url + "api/health", timeout=5).ok, 60, "the meter"
        )
        week_ago = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=7)
        hub.old_ada = add_closed_session(hub.ledger_url, "ada", week_ago, 2, **OLD)
        add_closed_session(hub.ledger_url, "bob", week_ago + timedelta(days=1), 1.5, gpus=2, **OLD)
        hub.start_server("ada", {"gpus": 1})
        hub.ada_container = hub.container_of("ada").id
        wait_until(lambda: any(s.running for s in ledger_sessions(hub, "ada")), 30, "ada's session")
        hub.create_users("bob")
        hub.tokens = {name: hub.user_token(name) for name in ("ada", "bob", "admin", "carol")}
        yield hub
    except BaseException:
        print(hub.logs())
        raise
    finally:
        hub.cleanup()


def ledger_sessions(hub, user=None):
    with Ledger(hub.ledger_url) as ledger:
        return ledger.sessions(user=user)


def ledger_storage(hub, user=None, since=None):
    """Homes the meter measured (once at start, then every 10 minutes): in every total."""
    with Ledger(hub.ledger_url) as ledger:
        return ledger.storage_sums(user=user, since=since)


#: the totals' fields that the rollups give: they grow with every flush of ada's
#: running server, so they are compared on their own, not with a second read's
MEASURED = {
    "busy_gpu_hours",
    "busy_gpu_hours_text",
    "idle_gpu_hours",
    "idle_gpu_hours_text",
    "busy_share",
    "busy_share_text",
    "energy",
}


def billed(totals: dict) -> dict:
    """`totals` without the :data:`MEASURED` fields (energy is not priced here)."""
    return {k: v for k, v in totals.items() if k not in MEASURED}


def meter(hub, user) -> Meter:
    return Meter(hub, hub.tokens[user])


def expected_usage(hub, user, as_of: str):
    now = datetime.fromisoformat(as_of.replace("Z", "+00:00"))
    sessions = ledger_sessions(hub, user)
    return (
        now,
        sessions,
        {
            "all_time": usage.totals(sessions, now=now, storage=ledger_storage(hub, user)).to_json(
                "EUR"
            ),
            "this_month": usage.totals(
                sessions,
                now=now,
                since=usage.month_start(now),
                storage=ledger_storage(hub, user, usage.month_start(now)),
            ).to_json("EUR"),
        },
    )


def test_each_user_sees_exactly_their_own_usage_as_the_ledger_has_it(hub):
    for user in ("ada", "bob"):
        data = meter(hub, user).json("api/usage")
        assert data["user"] == user
        now, sessions, expected = expected_usage(hub, user, data["as_of"])
        assert billed(data["all_time"]) == billed(expected["all_time"])
        assert billed({k: v for k, v in data["this_month"].items() if k != "since"}) == (
            billed(expected["this_month"])
        )
        assert [s["id"] for s in data["sessions"]["items"]] == [s.id for s in sessions][::-1]
        assert {s["user"] for s in data["sessions"]["items"]} == {user}
    ada = meter(hub, "ada").json("api/usage")
    (running,) = ada["running"]
    session = next(s for s in ledger_sessions(hub, "ada") if s.running)
    now = datetime.fromisoformat(ada["as_of"].replace("Z", "+00:00"))
    assert running["charge"] == usage.money(session.charge(now), "EUR")
    assert running["price_per_hour"] == usage.money(Decimal(36), "EUR")
    assert running["gpu_uuids"] == list(session.gpu_uuids)
    finished = ada["sessions"]["items"][-1]
    assert finished["charge"] == {"amount": "72.000000", "currency": "EUR", "text": "72.00 EUR"}
    assert finished["gpu_hours"] == "2.000000"
    # the simulated GPU idles at 0 % and 60 W: ada's running server is measured idle and
    # using energy; bob's session was written without rollups: unknown, not 0
    assert running["busy_share_text"] in ("0%", "–") and ada["all_time"]["busy_share"] in (0, None)
    bob = meter(hub, "bob").json("api/usage")["all_time"]
    assert bob["busy_gpu_hours"] is None and bob["energy"]["kwh"] is None


def test_a_user_cannot_see_another_but_admins_and_read_all_holders_can(hub):
    refused = meter(hub, "ada").get("api/usage", user="bob")
    assert refused.status_code == 403
    assert "ada may see only their own usage" in refused.json()["message"]
    assert meter(hub, "bob").get("api/users").status_code == 403
    for reader in ("admin", "carol"):
        data = meter(hub, reader).json("api/usage", user="bob")
        now, _, expected = expected_usage(hub, "bob", data["as_of"])
        assert data["user"] == "bob" and data["all_time"] == expected["all_time"]  # no rollups
        users = meter(hub, reader).json("api/users", since="", sort="user", order="asc")
        rows = {row["user"]: row for row in users["users"]["items"]}
        assert set(rows) == {"ada", "bob"}
        now = datetime.fromisoformat(users["as_of"].replace("Z", "+00:00"))
        for user in ("ada", "bob"):
            storage = ledger_storage(hub, user)
            total = usage.totals(ledger_sessions(hub, user), now=now, storage=storage)
            total = total.to_json("EUR")
            assert billed({k: rows[user][k] for k in total}) == billed(total)
        assert rows["ada"]["running_servers"] == [""]
        everyone = usage.totals(ledger_sessions(hub), now=now, storage=ledger_storage(hub)).to_json(
            "EUR"
        )
        assert billed(users["totals"]) == billed({"users": 2, **everyone})


def test_gpus_name_their_holder_only_to_those_who_may_know(hub):
    (uuid,) = hub.gpus_held()["ada/"]
    admin = {g["uuid"]: g for g in meter(hub, "admin").json("api/gpus")["gpus"]}
    assert len(admin) == 2 and admin[uuid]["holder"]["user"] == "ada"
    assert admin[uuid]["model"] == H100 and admin[uuid]["healthy"] is True
    assert admin[uuid]["memory_total_bytes"] == 80 * 1024**3
    bob = {g["uuid"]: g for g in meter(hub, "bob").json("api/gpus")["gpus"]}
    assert bob[uuid]["allocated"] is True and bob[uuid]["holder"] is None
    free = next(g for u, g in bob.items() if u != uuid)
    assert free["allocated"] is False and free["utilization"] == 0


def test_csv_export_is_one_invoice_line_per_session(hub):
    response = meter(hub, "ada").get("api/export.csv")
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text)))
    sessions = ledger_sessions(hub, "ada")
    assert [int(r["session_id"]) for r in rows] == [s.id for s in sessions]
    assert rows[0]["charge"] == "72.000000" and rows[0]["currency"] == "EUR"
    assert response.headers["X-Total-Count"] == str(len(sessions))
    everyone = meter(hub, "admin").get("api/export.csv", limit=1)
    assert everyone.headers["X-Total-Count"] == "3" and 'rel="next"' in everyone.headers["Link"]
    assert meter(hub, "ada").get("api/export.csv", user="bob").status_code == 403


def test_bad_arguments_are_400_with_what_is_allowed(hub):
    response = meter(hub, "ada").get("api/usage", since="last tuesday")
    assert response.status_code == 400
    assert "is not an ISO 8601 date or time" in response.json()["message"]
    response = meter(hub, "admin").get("api/users", limit="-5")
    assert response.status_code == 400
    assert "limit='-5' is not a whole number from 0 to 1000" in response.json()["message"]
    no_token = requests.get(hub.meter_url + "api/usage", timeout=30)
    assert no_token.status_code == 403


def test_metrics_for_read_metrics_tokens(hub):
    assert meter(hub, "ada").get("metrics").status_code == 403
    response = meter(hub, "admin").get("metrics")
    assert response.status_code == 200
    text = response.text
    (uuid,) = hub.gpus_held()["ada/"]
    assert re.search(rf'jupyter_gpu_meter_gpu_allocated\{{[^}}]*uuid="{uuid}"\}} 1\.0', text)
    match = re.search(r'jupyter_gpu_meter_user_gpu_seconds_total\{user="bob"\} (\S+)', text)
    assert float(match.group(1)) == 1.5 * 2 * 3600
    assert "jupyter_gpu_meter_sampler_tick_duration_seconds" in text


def test_the_hub_links_the_pages_and_oauth_logs_a_browser_in(hub):
    browser = login(hub, "ada")
    home = browser.get(hub.url + "/hub/home", timeout=30).text
    assert 'id="gpu-meter-nav-link" href="/services/gpu-meter/"' in home
    assert 'href="/services/gpu-meter/">gpu-meter</a>' in home  # the Services menu
    page = browser.get(hub.meter_url, timeout=30)  # through the hub's OAuth, no prompt
    assert page.status_code == 200 and "GPU usage" in page.text
    assert "/hub/static/css/style.min.css" in page.text
    # the page's own fetch: the service's cookie and the page's XSRF token
    token = re.search(r'xsrf_token: "([^"]+)"', page.text).group(1)
    live = browser.get(
        hub.meter_url + "api/usage",
        headers={"X-XSRFToken": token, "Sec-Fetch-Mode": "cors"},
        timeout=30,
    )
    assert live.status_code == 200 and live.json()["user"] == "ada"
    forged = browser.get(hub.meter_url + "api/usage", headers={"Sec-Fetch-Mode": "cors"})
    assert forged.status_code == 403
    assert browser.get(hub.meter_url + "admin", timeout=30).status_code == 403


def test_an_admin_token_stops_a_server_through_the_services_own_hub_token(hub):
    # ada's token may stop her own servers (delete:servers!user=ada), no one else's
    response = meter(hub, "ada").session.post(
        hub.meter_url + "admin/stop", data={"user": "bob"}, timeout=60
    )
    assert response.status_code == 403
    response = meter(hub, "admin").session.post(
        hub.meter_url + "admin/stop", data={"user": "ada", "server": ""}, timeout=60
    )
    # 202 while the hub is stopping it, 200 (hub: 204) once stopped
    assert response.status_code in (200, 202), response.text
    assert response.json()["hub_status"] in (202, 204)
    wait_until(lambda: hub.server_model("ada") is None, 60, "ada's server to stop")
    session = wait_until(
        lambda: next(
            (
                s
                for s in ledger_sessions(hub, "ada")
                if s.container_id == hub.ada_container and s.ended_at
            ),
            None,
        ),
        60,
        "the session to close",
    )
    assert session.charge(session.ended_at) > Decimal(0)
    again = meter(hub, "admin").session.post(
        hub.meter_url + "admin/stop", data={"user": "ada"}, timeout=60
    )
    assert again.status_code == 200, again.text
    assert again.json() == {"status": 200, "hub_status": 204, "message": "ada/ is stopped"}
