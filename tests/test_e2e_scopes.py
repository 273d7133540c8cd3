"""Scope-checked actions through a real hub: its tokens, its OAuth, its scope expansion.

An admin's token created with read-only scopes cannot stop a server or change
a budget; the same admin's full token can. Browsers logged in through the
hub's OAuth carry what ``setup_meter`` asks for there, cut down to what each
user holds: ada gets a stop button for her own server, the admin the budget
form. ada's own token stops her server, through the meter's own hub token
(which holds ``delete:servers``, not ``servers``).
"""

import re

import pytest
import requests

from tests.hub import Hub, login
from tests.metering import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

ACCESS = "access:services!service=gpu-meter"
BUDGET = {"amount": "50", "currency": "USD"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory, docker_client):
    hub = Hub(tmp_path_factory.mktemp("hub"), docker_client, "2", meter=True)
    try:
        hub.start()
        wait_until(
            lambda: requests.get(hub.meter_url + "api/health", timeout=5).ok, 60, "the meter"
        )
        hub.start_server("ada", {"gpus": 1})
        wait_until(lambda: running(hub, "ada"), 60, "the meter to see ada's server")
        yield hub
    except BaseException:
        print(hub.logs())
        raise
    finally:
        hub.cleanup()


def running(hub, user):
    """ada's running servers as the admin's full token reads them from the meter."""
    token = admin_token(hub)
    response = requests.get(
        hub.meter_url + "api/usage",
        params={"user": user, "limit": 0},
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    return response.ok and response.json()["running"]


def admin_token(hub, scopes=None):
    """A new token of the admin's, with `scopes` (None: all the admin holds)."""
    body = {"note": "test"} if scopes is None else {"note": "test", "scopes": scopes}
    response = hub.api("POST", "/users/admin/tokens", json=body)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def as_token(token):
    session = requests.Session()
    session.headers["Authorization"] = f"token {token}"
    return session


def test_browsers_carry_the_scopes_their_users_hold(hub):
    ada = login(hub, "ada")
    page = ada.get(hub.meter_url, timeout=30)
    assert page.status_code == 200
    assert page.headers["X-Frame-Options"] == "DENY"
    assert re.search(r'name="server" value=""[^>]*>\s*<input type="hidden" name="back"', page.text)
    assert "gpu-meter-stop" in page.text  # her own server: the hub gave delete:servers!user=ada
    admin = login(hub, "admin").get(hub.meter_url + "admin", timeout=30)
    assert admin.status_code == 200
    assert 'id="budget-form"' in admin.text and "gpu-meter-stop" in admin.text


def test_an_admins_read_only_token_cannot_stop_or_change_but_a_full_one_can(hub):
    read_only = as_token(admin_token(hub, [ACCESS, "read:users"]))
    stop = read_only.post(hub.meter_url + "admin/stop", data={"user": "ada"}, timeout=60)
    assert stop.status_code == 403, stop.text
    assert "delete:servers" in stop.json()["message"]
    put = read_only.put(hub.meter_url + "api/budgets/user/ada", json=BUDGET, timeout=30)
    assert put.status_code == 403, put.text
    assert "custom:gpu-meter:budgets" in put.json()["message"]
    # reading is still what it was: the admin sees everyone
    assert read_only.get(hub.meter_url + "api/users", timeout=30).status_code == 200
    assert running(hub, "ada")  # nothing stopped

    full = as_token(admin_token(hub))
    put = full.put(hub.meter_url + "api/budgets/user/ada", json=BUDGET, timeout=30)
    assert put.status_code == 200, put.text
    assert put.json()["budget"]["updated_by"] == "admin"


def test_a_users_own_token_stops_her_server_and_no_one_elses(hub):
    ada = as_token(hub.user_token("ada"))
    other = ada.post(hub.meter_url + "admin/stop", data={"user": "bob"}, timeout=60)
    assert other.status_code == 403, other.text
    response = ada.post(hub.meter_url + "admin/stop", data={"user": "ada"}, timeout=60)
    assert response.status_code in (200, 202), response.text
    assert response.json()["hub_status"] in (202, 204)
    wait_until(lambda: hub.server_model("ada") is None, 60, "ada's server to stop")
    wait_until(lambda: not running(hub, "ada"), 60, "the meter to close ada's session")
