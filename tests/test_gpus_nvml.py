"""GPU inventory through the real nvidia-ml-py bindings and the stand-in driver library."""

import logging

from jupyter_gpu_meter import GPUInventory
from jupyter_gpu_meter.gpus import SIMULATED_ENV


def inventory(monkeypatch):
    monkeypatch.delenv(SIMULATED_ENV, raising=False)
    return GPUInventory().discover()


def test_gpus_come_from_nvml(fake_nvml, monkeypatch):
    a = fake_nvml.add_gpu(name="NVIDIA H100 80GB HBM3", memory_total=85520809984)
    b = fake_nvml.add_gpu(name="NVIDIA H100 80GB HBM3", memory_total=85520809984)
    fake_nvml.add_gpu(name="NVIDIA L4", memory_total=24152899584)
    fake_nvml.set_topology(a, b, 10)
    fake_nvml.set_driver("550.54.15")
    fake_nvml.write()

    found = inventory(monkeypatch)
    assert found.source == "nvml"
    assert found.driver_version == "550.54.15"
    assert [(g.uuid, g.index, g.model) for g in found.gpus] == [
        (fake_nvml.uuids[0], 0, "NVIDIA H100 80GB HBM3"),
        (fake_nvml.uuids[1], 1, "NVIDIA H100 80GB HBM3"),
        (fake_nvml.uuids[2], 2, "NVIDIA L4"),
    ]
    assert [g.memory_total_bytes for g in found.gpus] == [85520809984, 85520809984, 24152899584]
    assert all(g.healthy for g in found.gpus)
    uuids = fake_nvml.uuids
    assert found.topology[frozenset(uuids[:2])] == 10
    assert found.topology[frozenset((uuids[0], uuids[2]))] == 50  # across the system


def test_a_lost_gpu_is_listed_unhealthy_and_the_others_still_answer(fake_nvml, monkeypatch):
    fake_nvml.add_gpu()
    fake_nvml.add_gpu()
    fake_nvml.set_lost(1)
    fake_nvml.write()

    found = inventory(monkeypatch)
    assert [g.healthy for g in found.gpus] == [True, False]
    assert found.gpus[0].uuid == fake_nvml.uuids[0]
    assert "lost" in found.gpus[1].problem.lower()


def test_no_driver_means_no_gpus_and_says_how_to_simulate(fake_nvml, monkeypatch, caplog):
    # nothing written: the stand-in library answers like a machine without a driver
    source = GPUInventory()
    source.log = logging.getLogger("test-inventory")
    monkeypatch.delenv(SIMULATED_ENV, raising=False)
    with caplog.at_level(logging.WARNING, "test-inventory"):
        found = source.discover()
    assert found.gpus == () and found.source == "none"
    assert "NVML is not available" in caplog.text
    assert "c.GPUInventory.simulated" in caplog.text
