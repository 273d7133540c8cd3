"""Notebooks on their own network: what code in a user's notebook can and cannot reach.

A real hub with its proxy and meter, the real Docker engine with its iptables
rules, real notebook containers. Every probe runs inside a user's container,
as the notebook user, the way an attacker with an ordinary account would try.
"""

import json
import os
import secrets
import socket
import time
from urllib.parse import urlparse

import pytest

from jupyter_gpu_meter import labels
from jupyter_gpu_meter.network import ICC_OPTION, NetworkError, ensure_network
from tests.hub import TEST_NETWORK

pytestmark = [pytest.mark.docker, pytest.mark.slow]

#: run inside the container: connect to each (name, host, port), say what happened
PROBE = """
import errno, json, socket, sys
out = {}
for name, host, port in json.loads(sys.argv[1]):
    sock = socket.socket()
    sock.settimeout(3)
    try:
        sock.connect((host, port))
        out[name] = "open"
    except socket.timeout:
        out[name] = "timeout"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e))
    finally:
        sock.close()
print(json.dumps(out))
"""

#: run inside the container: the notebook's own hub API call, with its own token
WHOAMI = """
import json, os, urllib.request
request = urllib.request.Request(
    os.environ["JUPYTERHUB_API_URL"] + "/user",
    headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]},
)
print(json.dumps(json.load(urllib.request.urlopen(request, timeout=10))))
"""


#: run inside the container: the HTTP status of GET base + each path (the server's token)
STATUSES = """
import json, os, sys, urllib.error, urllib.request
out = {}
for path in sys.argv[2:]:
    request = urllib.request.Request(
        sys.argv[1] + path,
        headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]},
    )
    try:
        out[path] = urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as e:
        out[path] = e.code
print(json.dumps(out))
"""


def inside(container, script: str, *args) -> dict:
    result = container.exec_run(["python3", "-c", script, *args], user="1000")
    assert result.exit_code == 0, result.output.decode()
    return json.loads(result.output)


def address_on(container, network: str) -> str:
    container.reload()
    return container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]


def host_reaches(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(3)
        return sock.connect_ex((host, port)) == 0


def postgres_port() -> int | None:
    url = os.environ.get("JGM_TEST_POSTGRES_URL", "")
    return (urlparse(url.replace("+psycopg", "")).port or 5432) if url else None


def test_a_notebook_reaches_its_hub_but_not_the_hosts_services_nor_other_notebooks(
    make_hub, docker_client
):
    hub = make_hub("2", meter=True)
    for user in ("ada", "bob"):
        assert hub.start_server(user, {"gpus": 1}).status_code in (201, 202)
        assert hub.server_model(user)["ready"]
    ada, bob = hub.container_of("ada"), hub.container_of("bob")

    network = docker_client.api.inspect_network(TEST_NETWORK)
    assert network["Options"][ICC_OPTION] == "false"
    assert network["Internal"] is True
    assert list(ada.attrs["NetworkSettings"]["Networks"]) == [TEST_NETWORK]
    gateway = network["IPAM"]["Config"][0]["Gateway"]
    bob_address = address_on(bob, TEST_NETWORK)

    # what listens on the host, and bob's notebook, are there: the host reaches them
    settings = hub.settings
    targets = {
        "meter": ("127.0.0.1", settings["meter_port"]),
        "proxy API": ("127.0.0.1", settings["proxy_api_port"]),
        "proxy": ("127.0.0.1", settings["port"]),
    }
    if postgres_port():
        targets["PostgreSQL"] = ("127.0.0.1", postgres_port())
    for name, (host, port) in targets.items():
        assert host_reaches(port, host), f"the {name} does not listen on the host: test is void"
    assert host_reaches(8888, bob_address), "the host cannot reach bob's notebook"

    # from ada's notebook: the host only at the gateway, where only the hub's API is,
    # and the meter's api/server-status and api/health (test_e2e_server_status.py)
    probes = [[name, gateway, port] for name, (_, port) in targets.items()]
    probes += [["hub API", gateway, settings["hub_port"]], ["bob", bob_address, 8888]]
    seen = inside(ada, PROBE, json.dumps(probes))
    assert seen.pop("hub API") == "open"
    assert seen.pop("meter") == "open"
    assert seen.pop("bob") in ("timeout", "EHOSTUNREACH"), "ada's notebook reached bob's"
    assert set(seen.values()) == {"ECONNREFUSED"}, seen
    meter = f"http://{gateway}:{settings['meter_port']}/services/gpu-meter/"
    answers = inside(ada, STATUSES, meter, "api/health", "api/usage", "", "metrics", "admin")
    assert answers == {"api/health": 200, "api/usage": 404, "": 404, "metrics": 404, "admin": 404}

    # and the notebook's own hub API works, with its own token
    assert inside(ada, WHOAMI)["name"] == "ada"


def test_a_hub_on_loopback_is_refused_with_the_setting_to_change(make_hub):
    hub = make_hub("2", **{"JupyterHub.hub_ip": "127.0.0.1"})
    response = hub.start_server("ada", {"gpus": 1})
    message = response.json()["message"]
    assert response.status_code == 500, response.text
    assert "notebooks on the Docker network" in message
    assert "c.JupyterHub.hub_ip" in message
    assert hub.server_model("ada") is None
    assert hub.containers(all=True) == []
    # nothing kept: with the hub where notebooks reach it, the same GPU starts
    hub.restart(**{"JupyterHub.hub_ip": hub_gateway()})
    assert hub.start_server("ada", {"gpus": 1}).status_code in (201, 202)
    assert hub.server_model("ada")["ready"]


def hub_gateway() -> str:
    import docker

    network = docker.from_env().api.inspect_network(TEST_NETWORK)
    return network["IPAM"]["Config"][0]["Gateway"]


def test_host_networking_still_works_when_an_admin_chooses_it(make_hub):
    hub = make_hub("2", network="host")
    assert hub.start_server("ada", {"gpus": 1}).status_code in (201, 202)
    assert hub.server_model("ada")["ready"]
    assert hub.container_of("ada").attrs["HostConfig"]["NetworkMode"] == "host"
    assert "every notebook shares the host's network" in hub.logs()


@pytest.fixture
def network_name(docker_client):
    name = f"jgm-test-net-{secrets.token_hex(3)}"
    yield name
    for network in docker_client.networks.list(names=[name]):
        network.remove()


def test_a_missing_network_is_created_with_traffic_between_notebooks_off(
    docker_client, network_name
):
    created = ensure_network(docker_client.api, network_name, internal=True)
    attrs = docker_client.api.inspect_network(network_name)
    assert attrs["Options"][ICC_OPTION] == "false"
    assert attrs["Internal"] is True
    assert attrs["Labels"] == {"jupyter-gpu-meter.network": "notebooks"}
    assert created.gateway == attrs["IPAM"]["Config"][0]["Gateway"]
    assert created.icc is False and created.internal is True
    # a second call uses it as it is
    assert ensure_network(docker_client.api, network_name, internal=False) == created


def test_a_network_created_meanwhile_by_another_process_is_used(docker_client, network_name):
    from docker.errors import NotFound

    class CreatedMeanwhile:
        """The real engine, except that the first inspect comes before the other
        process's create: ours then gets Docker's 409."""

        def __init__(self, api):
            self.api, self.inspected = api, 0

        def inspect_network(self, name):
            self.inspected += 1
            if self.inspected == 1:
                self.api.create_network(name, driver="bridge", check_duplicate=True)
                raise NotFound("not yet")
            return self.api.inspect_network(name)

        def create_network(self, name, **kwargs):
            return self.api.create_network(name, **kwargs)

    network = ensure_network(CreatedMeanwhile(docker_client.api), network_name)
    assert network.name == network_name
    assert network.icc is True  # the other process's choice: used as it is (and warned of)
    assert len(docker_client.networks.list(names=[network_name])) == 1


def test_networks_that_cannot_hold_notebooks_are_refused_with_what_to_do(
    docker_client, network_name
):
    with pytest.raises(NetworkError, match="Docker's own network"):
        ensure_network(docker_client.api, "host")

    class NoSuchDriver:
        """The real engine, asked for a network driver it does not have."""

        def __init__(self, api):
            self.api = api

        def inspect_network(self, name):
            return self.api.inspect_network(name)

        def create_network(self, name, **kwargs):
            return self.api.create_network(name, **{**kwargs, "driver": "no-such-driver"})

    with pytest.raises(NetworkError, match=f"cannot create the Docker network '{network_name}'"):
        ensure_network(NoSuchDriver(docker_client.api), network_name)
    assert docker_client.networks.list(names=[network_name]) == []


def test_the_containers_carry_their_hubs_id(make_hub):
    hub = make_hub("2", **{"HubIdentity.hub_id": "staging"})
    assert hub.start_server("ada", {"gpus": 0}).status_code in (201, 202)
    assert hub.container_of("ada").labels[labels.HUB] == "staging"


def test_two_hubs_on_one_engine_each_meter_only_their_own_and_never_share_a_gpu(
    make_hub, docker_client
):
    from jupyter_gpu_meter.ledger import Ledger
    from jupyter_gpu_meter.sessions import EVENTS_SINCE_KEY
    from tests.metering import user_sessions, wait_until

    prod = make_hub("2", meter=True, **{"HubIdentity.hub_id": "prod"})
    staging = make_hub("2", meter=True, **{"HubIdentity.hub_id": "staging"})
    assert prod.start_server("ada", {"gpus": 1}).status_code in (201, 202)
    assert staging.start_server("bob", {"gpus": 1}).status_code in (201, 202)
    held = {**prod.gpus_held(), **staging.gpus_held()}
    assert len({uuid for uuids in held.values() for uuid in uuids}) == 2, held

    # the GPU staging holds is taken for prod too, and prod's refusal says why
    refused = prod.start_server("cyd", {"gpus": 1})
    assert refused.status_code == 503
    assert refused.json()["message"] == (
        "no free Simulated GPU: 0 of 2 free (1 held by another hub's servers on this Docker engine)"
    )

    # each meter records its own hub's session, and only that
    wait_until(lambda: user_sessions(prod, "ada"), 60, "prod's meter to record ada")
    wait_until(lambda: user_sessions(staging, "bob"), 60, "staging's meter to record bob")

    # while prod is down, staging runs and stops a server; prod's meter replays
    # Docker's events when it is back and records none of them
    prod.stop()
    staging.stop_server("bob")
    before = int(time.time()) - 1
    assert staging.start_server("dan", {"gpus": 0}).status_code in (201, 202)
    dan = staging.container_of("dan")
    staging.stop_server("dan")
    (dies,) = docker_client.api.events(
        since=before,
        until=int(time.time()) + 1,
        filters={"container": dan.id, "event": "die"},
        decode=True,
    )
    prod.start()

    def replayed_past_dan():
        with Ledger(prod.ledger_url) as ledger:
            since = ledger.get_state(EVENTS_SINCE_KEY)
        return since and int(since) >= int(dies["timeNano"])

    wait_until(replayed_past_dan, 60, "prod's meter to replay past dan's stop")
    with Ledger(prod.ledger_url) as ledger:
        assert {s.user for s in ledger.sessions()} == {"ada"}
    with Ledger(staging.ledger_url) as ledger:
        assert {s.user for s in ledger.sessions()} == {"bob", "dan"}
