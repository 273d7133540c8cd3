"""GPU inventory from simulated and static settings, and the CUDA/driver check."""

import uuid

import pytest
from traitlets.config import Config

from jupyter_gpu_meter import GPUInventory
from jupyter_gpu_meter.gpus import (
    _SIMULATED_NAMESPACE,
    SIMULATED_ENV,
    SIMULATED_HOST_ENV,
    cuda_driver_problem,
    parse_simulated,
)


def test_simulated_count_and_models():
    gpus = parse_simulated("2xNVIDIA H100 80GB HBM3, 1 x NVIDIA L4 24GB,2")
    assert [g.model for g in gpus] == ["NVIDIA H100 80GB HBM3"] * 2 + ["NVIDIA L4 24GB"] + [
        "Simulated GPU"
    ] * 2
    assert [g.index for g in gpus] == [0, 1, 2, 3, 4]
    assert gpus[0].memory_total_bytes == 80 * 1024**3
    assert len({g.uuid for g in gpus}) == 5
    assert all(g.uuid.startswith("GPU-") and g.healthy for g in gpus)


def test_simulated_uuids_are_stable_across_restarts():
    assert parse_simulated("4") == parse_simulated("4")


@pytest.mark.parametrize("bad", ["0", "2y", "2x", "2000", "-1", "#1"])
def test_bad_simulated_spec_says_the_accepted_forms(bad):
    with pytest.raises(ValueError, match="use a count \\('4'\\), a count and a model"):
        GPUInventory(simulated=bad)


def test_simulated_from_environment(monkeypatch):
    monkeypatch.setenv(SIMULATED_ENV, "2xNVIDIA H100 80GB HBM3")
    inventory = GPUInventory().discover()
    assert inventory.source == "simulated"
    assert inventory.models == ["NVIDIA H100 80GB HBM3"]
    assert len(inventory.gpus) == 2


def test_config_wins_over_environment(monkeypatch):
    monkeypatch.setenv(SIMULATED_ENV, "8")
    config = Config()
    config.GPUInventory.simulated = "1"
    assert len(GPUInventory(config=config).discover().gpus) == 1


def test_static_list(monkeypatch):
    monkeypatch.delenv(SIMULATED_ENV, raising=False)
    inventory = GPUInventory(
        static=[
            {"uuid": "GPU-a", "model": "NVIDIA A10"},
            {"uuid": "GPU-b", "model": "NVIDIA A10", "healthy": False},
        ]
    ).discover()
    assert inventory.source == "static"
    assert [(g.uuid, g.index, g.healthy) for g in inventory.gpus] == [
        ("GPU-a", 0, True),
        ("GPU-b", 1, False),
    ]


def test_static_entry_needs_uuid_and_model():
    with pytest.raises(ValueError, match="needs 'uuid' and 'model', may have"):
        GPUInventory(static=[{"uuid": "GPU-a", "name": "A10"}])


@pytest.mark.parametrize(
    "cuda, driver, needed",
    [
        ("12.8", "550.54.15", None),
        ("13.0", "550.54.15", 580),
        ("13.0", "580.65.06", None),
        ("12.6", "470.1", 525),
        ("", "550.54.15", None),  # image without the label: not checked
        ("12.8", "", None),  # driver unknown (simulated)
    ],
)
def test_cuda_driver_check(cuda, driver, needed):
    problem = cuda_driver_problem(cuda, driver)
    if needed is None:
        assert problem == ""
    else:
        assert f"CUDA {cuda}, which needs an NVIDIA driver >= {needed}" in problem
        assert f"this host has {driver}" in problem


def test_no_simulated_host_keeps_the_one_host_uuids(monkeypatch):
    """One-host mode unchanged: these UUIDs are in existing ledgers and on running containers."""
    monkeypatch.delenv(SIMULATED_HOST_ENV, raising=False)
    inventory = GPUInventory(simulated="2xNVIDIA H100 80GB HBM3").discover()
    # the UUIDs this spec had before simulated_host existed
    assert [g.uuid for g in inventory.gpus] == [
        "GPU-97af6e22-5401-5f0d-9ccb-4a36927eb650",
        "GPU-075129b1-6825-512c-bda8-aa8cfcf16c8a",
    ]
    assert inventory.gpus == parse_simulated("2xNVIDIA H100 80GB HBM3")


def test_simulated_host_gives_each_node_its_own_uuids(monkeypatch):
    monkeypatch.setenv(SIMULATED_HOST_ENV, "gpu-node-1")
    node1 = GPUInventory(simulated="2xNVIDIA H100 80GB HBM3").discover().gpus
    node2 = GPUInventory(simulated="2xNVIDIA H100 80GB HBM3", simulated_host="gpu-node-2")
    node2 = node2.discover().gpus
    assert [g.uuid for g in node1] == [
        "GPU-" + str(uuid.uuid5(_SIMULATED_NAMESPACE, f"gpu-node-1/{i}:NVIDIA H100 80GB HBM3"))
        for i in range(2)
    ]
    assert not {g.uuid for g in node1} & {g.uuid for g in node2}
    assert not {g.uuid for g in node1} & {
        g.uuid for g in parse_simulated("2xNVIDIA H100 80GB HBM3")
    }
    # the same node after a restart: the same GPUs
    assert node1 == parse_simulated("2xNVIDIA H100 80GB HBM3", "gpu-node-1")
    assert [(g.index, g.model) for g in node1] == [(i, "NVIDIA H100 80GB HBM3") for i in range(2)]


@pytest.mark.parametrize("bad", [" node", "node ", "a/b", "a=b", "a,b", "a\nb"])
def test_bad_simulated_host_says_what_is_allowed(bad):
    with pytest.raises(ValueError, match="use a node name without spaces at either end"):
        GPUInventory(simulated_host=bad)
