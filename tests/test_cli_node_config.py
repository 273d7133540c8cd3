"""``jupyter-gpu-meter node-config``: a Swarm node's configuration from simulated GPUs and from
NVML (the fake driver library behind the real bindings)."""

import json
import shlex
import socket

import pytest

from jupyter_gpu_meter.cli.node_config import NodeConfigCommand, engine_name
from jupyter_gpu_meter.gpus import SIMULATED_ENV, SIMULATED_HOST_ENV, parse_simulated
from tests.test_cli import cli

H100 = "NVIDIA H100 80GB HBM3"
KEYS = [
    "format_version",
    "node",
    "source",
    "model",
    "gpus",
    "unhealthy",
    "node_generic_resources",
    "dockerd_args",
    "daemon_json",
    "runtime_config_toml",
    "labels",
    "label_command",
]


def run(capsys, *argv):
    """The command in this process (so it sees the fake NVML library): (status, out, err)."""
    NodeConfigCommand.clear_instance()
    command = NodeConfigCommand()
    status = 0
    try:
        command.initialize(list(argv))
        command.start()
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def no_simulation(monkeypatch):
    monkeypatch.delenv(SIMULATED_ENV, raising=False)
    monkeypatch.delenv(SIMULATED_HOST_ENV, raising=False)


def test_simulated_node_as_json(monkeypatch, no_simulation):
    monkeypatch.setenv(SIMULATED_ENV, f"2x{H100}")
    result = cli("node-config", "--node", "gpu-node-1", "--format", "json")
    config = json.loads(result.stdout)
    uuids = [g.uuid for g in parse_simulated(f"2x{H100}", "gpu-node-1")]
    assert list(config) == KEYS
    assert config == {
        "format_version": 1,
        "node": "gpu-node-1",
        "source": "simulated",
        "model": H100,
        "gpus": [
            {"uuid": uuids[i], "index": i, "model": H100, "memory_total_bytes": 80 * 1024**3}
            for i in range(2)
        ],
        "unhealthy": [],
        "node_generic_resources": [f"NVIDIA-GPU={u}" for u in uuids],
        "dockerd_args": [
            "--node-generic-resource",
            f"NVIDIA-GPU={uuids[0]}",
            "--node-generic-resource",
            f"NVIDIA-GPU={uuids[1]}",
        ],
        "daemon_json": {
            "node-generic-resources": [f"NVIDIA-GPU={u}" for u in uuids],
            "default-runtime": "nvidia",
            "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}},
        },
        "runtime_config_toml": 'swarm-resource = "DOCKER_RESOURCE_NVIDIA-GPU"',
        "labels": {"jupyter-gpu-meter.gpu-model": H100, "jupyter-gpu-meter.gpu-count": "2"},
        "label_command": [
            "docker",
            "node",
            "update",
            "--label-add",
            f"jupyter-gpu-meter.gpu-model={H100}",
            "--label-add",
            "jupyter-gpu-meter.gpu-count=2",
            "gpu-node-1",
        ],
    }


def test_two_simulated_nodes_get_different_gpus(monkeypatch, capsys, no_simulation):
    monkeypatch.setenv(SIMULATED_ENV, f"2x{H100}")
    configs = [
        json.loads(run(capsys, "--node", node, "--format", "json")[1])
        for node in ("gpu-node-1", "gpu-node-2")
    ]
    first, second = ({g["uuid"] for g in c["gpus"]} for c in configs)
    assert len(first | second) == 4


def test_simulated_host_names_the_node_when_no_node_is_given(monkeypatch, capsys, no_simulation):
    monkeypatch.setenv(SIMULATED_ENV, f"1x{H100}")
    monkeypatch.setenv(SIMULATED_HOST_ENV, "gpu-node-7")
    config = json.loads(run(capsys, "--format", "json")[1])
    assert config["node"] == "gpu-node-7"
    assert config["gpus"][0]["uuid"] == parse_simulated(f"1x{H100}", "gpu-node-7")[0].uuid


def test_the_text_says_what_goes_where(monkeypatch, capsys, no_simulation):
    monkeypatch.setenv(SIMULATED_ENV, f"2x{H100}")
    status, out, _ = run(capsys, "--node", "gpu-node-1")
    assert status == 0
    assert out.startswith(f"# Node gpu-node-1: 2 × {H100} (from simulated)\n")
    daemon = out.split("/etc/docker/daemon.json on gpu-node-1")[1].split("\n", 1)[1]
    daemon = json.loads(daemon.split("\n\n")[0])
    assert daemon["default-runtime"] == "nvidia"
    assert len(daemon["node-generic-resources"]) == 2
    assert '\nswarm-resource = "DOCKER_RESOURCE_NVIDIA-GPU"\n' in out
    command = out.rstrip("\n").rsplit("\n", 1)[1]
    assert shlex.split(command) == [
        "docker",
        "node",
        "update",
        "--label-add",
        f"jupyter-gpu-meter.gpu-model={H100}",
        "--label-add",
        "jupyter-gpu-meter.gpu-count=2",
        "gpu-node-1",
    ]


def test_a_node_with_two_models_is_refused(monkeypatch, capsys, no_simulation):
    monkeypatch.setenv(SIMULATED_ENV, f"2x{H100},1xNVIDIA L4")
    status, out, err = run(capsys, "--node", "gpu-node-1", "--format", "json")
    assert status == 2 and out == ""
    assert (
        f"node 'gpu-node-1' has GPUs of 2 models (2 × {H100}, 1 × NVIDIA L4): "
        "a Swarm placement constraint picks a node by its one jupyter-gpu-meter.gpu-model label"
    ) in err


def test_a_bad_node_name_is_refused(monkeypatch, capsys, no_simulation):
    monkeypatch.setenv(SIMULATED_ENV, "1")
    status, _, err = run(capsys, "--node", "a/b")
    assert status == 2
    assert "use a node name without spaces at either end" in err


def test_gpus_from_nvml(fake_nvml, capsys, no_simulation):
    for _ in range(4):
        fake_nvml.add_gpu(name="NVIDIA A100-SXM4-80GB", memory_total=85899345920)
    fake_nvml.write()
    status, out, _ = run(capsys, "--node", "gpu-node-2", "--format", "json")
    config = json.loads(out)
    assert status == 0 and config["source"] == "nvml"
    assert [g["uuid"] for g in config["gpus"]] == fake_nvml.uuids
    assert config["node_generic_resources"] == [f"NVIDIA-GPU={u}" for u in fake_nvml.uuids]
    assert config["labels"] == {
        "jupyter-gpu-meter.gpu-model": "NVIDIA A100-SXM4-80GB",
        "jupyter-gpu-meter.gpu-count": "4",
    }


def test_a_gpu_nvml_cannot_reach_is_left_out_and_said(fake_nvml, capsys, no_simulation):
    fake_nvml.add_gpu(name=H100)
    fake_nvml.add_gpu(name=H100)
    fake_nvml.set_lost(1)
    fake_nvml.write()
    status, out, _ = run(capsys, "--node", "gpu-node-1")
    assert status == 0
    assert f"# Node gpu-node-1: 1 × {H100} (from nvml)" in out
    assert "# left out: GPU 1 (unknown-index-1):" in out
    assert f"NVIDIA-GPU={fake_nvml.uuids[0]}" in out
    assert "jupyter-gpu-meter.gpu-count=1 gpu-node-1" in out


def test_nvml_with_mixed_models_is_refused(fake_nvml, capsys, no_simulation):
    fake_nvml.add_gpu(name=H100)
    fake_nvml.add_gpu(name="NVIDIA L4")
    fake_nvml.write()
    status, _, err = run(capsys, "--node", "gpu-node-1")
    assert status == 2 and "has GPUs of 2 models" in err


def test_a_node_without_gpus_only_gets_its_count_label(fake_nvml, capsys, no_simulation):
    # nothing written: the fake library answers like a machine without a driver
    status, out, _ = run(capsys, "--node", "cpu-node", "--format", "json")
    config = json.loads(out)
    assert status == 0 and list(config) == KEYS
    assert config["source"] == "none" and config["gpus"] == [] and config["model"] == ""
    assert config["daemon_json"] == {} and config["runtime_config_toml"] == ""
    assert config["label_command"] == [
        "docker",
        "node",
        "update",
        "--label-add",
        "jupyter-gpu-meter.gpu-count=0",
        "cpu-node",
    ]
    status, out, _ = run(capsys, "--node", "cpu-node")
    assert "needs no GPU resources and no NVIDIA runtime" in out


def test_the_config_file_is_read(tmp_path, capsys, no_simulation):
    config_file = tmp_path / "jupyterhub_config.py"
    config_file.write_text(
        'c.GPUInventory.simulated = "1xNVIDIA L4"\nc.GPUInventory.simulated_host = "l4-node"\n'
    )
    status, out, _ = run(capsys, "--config", str(config_file), "--format", "json")
    config = json.loads(out)
    assert (config["node"], config["model"]) == ("l4-node", "NVIDIA L4")


def test_the_node_name_defaults_to_the_engines_or_the_hosts(monkeypatch, docker_client):
    assert engine_name() == docker_client.info()["Name"]
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert engine_name() == socket.gethostname()
