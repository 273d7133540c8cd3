"""The notebooks' network as the spawner reads it from Docker: pure, no engine."""

import pytest

from jupyter_gpu_meter.network import ICC_OPTION, NetworkError, NotebookNetwork, creation_options


def inspect(**changes):
    attrs = {
        "Name": "jupyter-gpu-meter",
        "Driver": "bridge",
        "Internal": False,
        "Options": {ICC_OPTION: "false"},
        "IPAM": {
            "Config": [
                {"Subnet": "fd00::/64", "Gateway": "fd00::1"},
                {"Subnet": "172.30.0.0/16", "Gateway": "172.30.0.1"},
            ]
        },
    }
    attrs.update(changes)
    return attrs


def test_the_ipv4_gateway_is_where_notebooks_reach_the_hub():
    network = NotebookNetwork.from_inspect(inspect())
    assert network.gateway == "172.30.0.1"
    assert network.subnet == "172.30.0.0/16"
    assert network.icc is False
    assert network.internal is False


def test_a_network_without_the_option_lets_containers_talk():
    assert NotebookNetwork.from_inspect(inspect(Options={})).icc is True
    assert NotebookNetwork.from_inspect(inspect(Options={ICC_OPTION: "False"})).icc is False


def test_only_bridge_networks_with_an_ipv4_gateway_hold_notebooks():
    with pytest.raises(NetworkError, match="uses the 'overlay' driver; notebooks need a bridge"):
        NotebookNetwork.from_inspect(inspect(Driver="overlay"))
    only_v6 = {"Config": [{"Subnet": "fd00::/64", "Gateway": "fd00::1"}]}
    with pytest.raises(NetworkError, match="no IPv4 gateway"):
        NotebookNetwork.from_inspect(inspect(IPAM=only_v6))


def test_new_networks_are_bridges_with_traffic_between_containers_off():
    options = creation_options(internal=True)
    assert options["driver"] == "bridge"
    assert options["options"] == {ICC_OPTION: "false"}
    assert options["internal"] is True
