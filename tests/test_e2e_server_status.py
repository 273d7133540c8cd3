"""api/server-status from inside a real notebook container, with the server's own token.

A real hub with its proxy and meter (setup_meter, setup_network as shipped), the real
Docker engine, real notebook containers. Code in ada's notebook reads
``$JUPYTER_GPU_METER_API_URL`` + ``api/server-status`` with ``$JUPYTERHUB_API_TOKEN``,
as JupyterLab's status bar does; the answer agrees with ``api/usage`` for that session.
What else a notebook reaches on the host: test_e2e_network.py.
"""

import json
from decimal import Decimal

import pytest
import requests
from jupyterhub.scopes import expand_scopes

from jupyter_gpu_meter import labels
from jupyter_gpu_meter.hubconfig import ACCESS_SCOPE
from tests.hub import TEST_NETWORK
from tests.metering import wait_until
from tests.test_e2e_network import inside

pytestmark = [pytest.mark.docker, pytest.mark.slow]

#: run inside the container as the notebook user: GET the meter's `path`, with the server's
#: own token, as the status bar does; prints the status code and the JSON body
ASK_METER = """
import json, os, sys, urllib.error, urllib.request
request = urllib.request.Request(
    os.environ["JUPYTER_GPU_METER_API_URL"] + sys.argv[1],
    headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]},
)
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print(json.dumps({"code": response.status, "body": json.load(response)}))
except urllib.error.HTTPError as e:
    print(json.dumps({"code": e.code, "body": json.load(e)}))
"""

#: run inside: the hub's model of the server's own token (its scopes)
WHOAMI = """
import json, os, urllib.request
request = urllib.request.Request(
    os.environ["JUPYTERHUB_API_URL"] + "/user",
    headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]},
)
print(json.dumps(json.load(urllib.request.urlopen(request, timeout=10))))
"""


def env_of(container) -> dict:
    container.reload()
    return dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])


def running_usage(hub, token: str, server: str = "") -> dict:
    """ada's running session as api/usage gives it (through the hub's proxy)."""
    response = requests.get(
        hub.meter_url + "api/usage", headers={"Authorization": f"token {token}"}, timeout=30
    )
    response.raise_for_status()
    (session,) = [s for s in response.json()["running"] if s["server"] == server]
    return session


def test_a_notebooks_own_token_reads_its_servers_status_and_no_one_elses(make_hub):
    hub = make_hub("2", meter=True, **{"Pricing.default_price": "1.80"})
    for user in ("ada", "bob"):
        assert hub.start_server(user, {"gpus": 1}).status_code in (201, 202)
        assert hub.server_model(user)["ready"]
    ada = hub.container_of("ada")

    # the spawner told the notebook where the meter is: the network's gateway, its port
    gateway = hub.docker.api.inspect_network(TEST_NETWORK)["IPAM"]["Config"][0]["Gateway"]
    url = env_of(ada)["JUPYTER_GPU_METER_API_URL"]
    assert url == f"http://{gateway}:{hub.settings['meter_port']}/services/gpu-meter/"

    # the server's own token: the hub's defaults for it, plus the meter, for ada only
    scopes = inside(ada, WHOAMI)["scopes"]
    raw = ["users:activity!user=ada", "access:servers!server=ada/", ACCESS_SCOPE]
    # as the hub expands them, and the identity it lets every token read (whoami)
    identity = {"read:users:name!user=ada", "read:users:groups!user=ada"}
    assert set(scopes) == expand_scopes(raw) | identity

    token = hub.user_token("ada")
    wait_until(
        lambda: inside(ada, ASK_METER, "api/server-status")["code"] == 200,
        60,
        "the meter to know ada's server",
    )
    before = running_usage(hub, token)
    seen = inside(ada, ASK_METER, "api/server-status")
    after = running_usage(hub, token)
    assert seen["code"] == 200, seen
    status = seen["body"]
    assert (status["user"], status["server"], status["running"]) == ("ada", "", True)
    assert status["started_at"] == before["started_at"]
    assert Decimal(status["price_per_hour"]) == Decimal(before["price_per_hour"]["amount"])
    assert status["price_per_hour_text"] == "1.80 USD/h"
    assert status["cost_so_far_text"] in {before["charge"]["text"], after["charge"]["text"]}
    uuids = labels.gpus_from_labels(ada.labels)
    assert [gpu["uuid"] for gpu in status["gpus"]] == uuids
    assert status["gpus_text"] == f"1 × {ada.labels[labels.GPU_MODEL]}"
    # the hub's default idle timeout (1 h) and no max age: at most the idle stop
    assert {d["policy"] for d in status["deadlines"]} <= {"idle"}

    # another user's server: refused, by name too
    other = inside(ada, ASK_METER, "api/server-status?user=bob")
    assert other["code"] == 403, other
    assert "ada may see only their own usage" in other["body"]["message"]
    assert inside(ada, ASK_METER, "api/server-status?server=bob")["code"] == 404
    # on the notebooks' address, the meter answers nothing else
    rest = inside(ada, ASK_METER, "api/usage")
    assert rest["code"] == 404 and "only api/server-status" in rest["body"]["message"]
    # and bob's notebook reads bob's, not ada's
    bob = inside(hub.container_of("bob"), ASK_METER, "api/server-status")["body"]
    assert bob["user"] == "bob" and bob["gpus"][0]["uuid"] not in uuids


def test_with_host_networking_a_notebook_reaches_the_meter_on_loopback(make_hub):
    hub = make_hub("2", meter=True, network="host")
    assert hub.start_server("ada", {"gpus": 0}).status_code in (201, 202)
    assert hub.server_model("ada")["ready"]
    ada = hub.container_of("ada")
    url = env_of(ada)["JUPYTER_GPU_METER_API_URL"]
    assert url == f"http://127.0.0.1:{hub.settings['meter_port']}/services/gpu-meter/"
    seen = wait_until(
        lambda: (answer := inside(ada, ASK_METER, "api/server-status"))["code"] == 200 and answer,
        60,
        "the meter to know ada's server",
    )
    assert seen["body"]["gpus_text"] == "no GPU", json.dumps(seen)
