"""What setup_meter and setup_network configure so that code in a notebook reaches the meter:
the notebook server's own token's scopes, and $JUPYTER_GPU_METER_API_URL. Through a real
hub, from inside a real notebook container: test_e2e_server_status.py."""

import secrets

import pytest
from jupyterhub.roles import get_default_roles
from traitlets.config import Config

from jupyter_gpu_meter.hubconfig import (
    ACCESS_SCOPE,
    notebook_meter_url,
    setup_meter,
    setup_network,
)
from jupyter_gpu_meter.spawner import GPUDockerSpawner

CONFIG = "/etc/jupyterhub/jupyterhub_config.py"
URL = "http://127.0.0.1:10101"
#: JupyterHub's own scopes of a server's $JUPYTERHUB_API_TOKEN (its `server` role)
HUB_DEFAULTS = next(role for role in get_default_roles() if role["name"] == "server")["scopes"]


def server_role(c) -> dict:
    (role,) = [role for role in c.JupyterHub.load_roles if role["name"] == "server"]
    return role


def test_a_servers_own_token_gets_the_meter_on_top_of_the_hubs_defaults():
    c = Config()
    setup_meter(c, CONFIG, url=URL)
    assert HUB_DEFAULTS == ["users:activity!user", "access:servers!server"]
    assert server_role(c)["scopes"] == [*HUB_DEFAULTS, ACCESS_SCOPE]
    setup_meter(c, CONFIG, url=URL)  # again: nothing twice
    assert server_role(c)["scopes"] == [*HUB_DEFAULTS, ACCESS_SCOPE]
    assert "server_token_scopes" not in c.Spawner


def test_an_admins_own_server_scopes_are_kept_and_extended():
    c = Config()
    c.JupyterHub.load_roles = [{"name": "server", "scopes": ["users:activity!user", "read:users"]}]
    c.GPUDockerSpawner.server_token_scopes = ["users:activity!user"]  # replaces the role
    c.Spawner.server_token_scopes = lambda spawner: ["users:activity!user"]  # theirs to extend
    setup_meter(c, CONFIG, url=URL)
    assert server_role(c)["scopes"] == ["users:activity!user", "read:users", ACCESS_SCOPE]
    assert c.GPUDockerSpawner.server_token_scopes == ["users:activity!user", ACCESS_SCOPE]
    assert callable(c.Spawner.server_token_scopes)


def test_with_host_networking_notebooks_reach_the_meter_where_it_listens():
    c = Config()
    c.GPUDockerSpawner.network_name = "host"
    setup_meter(c, CONFIG, url=URL)
    assert c.GPUDockerSpawner.meter_api_url == URL + "/services/gpu-meter/"
    assert GPUDockerSpawner(config=c).meter_api_url == URL + "/services/gpu-meter/"


def test_without_a_known_network_no_url_is_given():
    c = Config()
    setup_meter(c, CONFIG, url=URL)  # Docker's default network: the meter is on loopback
    assert "meter_api_url" not in c.GPUDockerSpawner


def test_the_url_is_the_gateway_the_meters_port_and_the_hubs_base_url():
    assert notebook_meter_url(URL, host="172.18.0.1") == (
        "http://172.18.0.1:10101/services/gpu-meter/"
    )
    assert notebook_meter_url(URL + "/", host="10.0.0.1", base_url="/jhub/") == (
        "http://10.0.0.1:10101/jhub/services/gpu-meter/"
    )


def test_a_bad_url_is_refused_saying_what_is_allowed():
    with pytest.raises(ValueError, match="give an http.s. URL ending in '/'"):
        GPUDockerSpawner(meter_api_url="172.18.0.1:10101")


@pytest.fixture
def network_name(docker_client):
    name = f"jgm-test-net-{secrets.token_hex(3)}"
    yield name
    for network in docker_client.networks.list(names=[name]):
        network.remove()


@pytest.mark.docker
@pytest.mark.parametrize("meter_first", [False, True])
def test_on_the_notebooks_network_the_meter_listens_on_its_gateway_too(network_name, meter_first):
    c = Config()
    c.JupyterHub.base_url = "/jhub/"
    if meter_first:
        setup_meter(c, CONFIG, url=URL)
    network = setup_network(c, network_name, internal=True)
    if not meter_first:
        setup_meter(c, CONFIG, url=URL)
    assert c.MeterService.notebook_ip == c.JupyterHub.hub_ip == network.gateway
    assert c.GPUDockerSpawner.meter_api_url == (
        f"http://{network.gateway}:10101/jhub/services/gpu-meter/"
    )
