"""Energy counters and GPM SM activity: the NVML sampler against the stand-in driver
library (counter, reset, unsupported; GPM on, off, failing), and the simulated sampler's
energy integrated over its clock."""

import json
import logging
from datetime import datetime, timedelta, timezone

import pytest

from jupyter_gpu_meter.gpus import parse_simulated
from jupyter_gpu_meter.sampler import NVMLSampler, SimulatedSampler
from tests.fakenvml import gpm_samples_allocated

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=timezone.utc)


def open_sampler(fake_nvml, **kwargs):
    fake_nvml.write()
    sampler = NVMLSampler(**kwargs)
    sampler.open()
    return sampler


# --- energy ----------------------------------------------------------------------------


def test_the_energy_counter_is_read_every_tick_a_reset_passes_as_it_is(fake_nvml):
    fake_nvml.add_gpu(energy_mj=5_000_000)
    fake_nvml.add_gpu(energy_mj=7)
    with open_sampler(fake_nvml) as sampler:
        first = sampler.sample()
        fake_nvml.add_energy(0, 1_500)
        fake_nvml.set_energy(1, 3)  # the driver reloaded: the counter starts again
        fake_nvml.write()
        second = sampler.sample()
    assert [g.energy_mj for g in first.gpus] == [5_000_000, 7]
    assert [g.energy_mj for g in second.gpus] == [5_001_500, 3]
    assert all(g.healthy for g in first.gpus + second.gpus)


def test_energy_not_supported_is_none_logged_once_and_the_gpu_healthy(fake_nvml, caplog):
    fake_nvml.add_gpu(energy_mj=100, util=20)
    fake_nvml.add_gpu(energy_mj=200, util=30)
    fake_nvml.set_unsupported(0, "nvmlDeviceGetTotalEnergyConsumption")
    with caplog.at_level(logging.INFO), open_sampler(fake_nvml) as sampler:
        ticks = [sampler.sample() for _ in range(3)]
        fake_nvml.set_unsupported(0, "nvmlDeviceGetTotalEnergyConsumption", False)
        fake_nvml.write()
        back = sampler.sample()
    for tick in ticks:
        assert [(g.energy_mj, g.utilization, g.healthy) for g in tick.gpus] == [
            (None, 20, True),
            (200, 30, True),
        ]
    assert [g.energy_mj for g in back.gpus] == [100, 200]
    notes = [r for r in caplog.records if "nvmlDeviceGetTotalEnergyConsumption" in r.message]
    assert len(notes) == 1 and "Not Supported" in notes[0].message


@pytest.mark.parametrize("error", ["NVML_ERROR_NO_PERMISSION", "NVML_ERROR_FUNCTION_NOT_FOUND"])
def test_energy_not_allowed_or_missing_in_the_driver_is_none(fake_nvml, monkeypatch, error):
    import pynvml

    def refuse(handle):
        raise pynvml.NVMLError(getattr(pynvml, error))

    fake_nvml.add_gpu(energy_mj=100, util=20)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", refuse)
    with open_sampler(fake_nvml) as sampler:
        (gpu,) = sampler.sample().gpus
    assert (gpu.energy_mj, gpu.utilization, gpu.healthy) == (None, 20, True)


def test_an_energy_call_that_breaks_marks_the_gpu_unhealthy(fake_nvml, monkeypatch):
    import pynvml

    def broken(handle):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    fake_nvml.add_gpu(energy_mj=100)
    with open_sampler(fake_nvml) as sampler:
        monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", broken)
        (gpu,) = sampler.sample().gpus
        monkeypatch.undo()
        (again,) = sampler.sample().gpus
    assert (gpu.healthy, gpu.energy_mj) == (False, None)
    assert gpu.problem == "Unknown Error (nvmlDeviceGetTotalEnergyConsumption)"
    assert (again.healthy, again.energy_mj) == (True, 100)


# --- GPM -------------------------------------------------------------------------------


def test_gpm_sm_activity_from_the_second_tick_on_gpus_that_have_it(fake_nvml, caplog):
    fake_nvml.add_gpu(gpm=True, sm_activity=37.5)
    fake_nvml.add_gpu()  # no GPM (before Hopper)
    with caplog.at_level(logging.INFO), open_sampler(fake_nvml) as sampler:
        assert gpm_samples_allocated(fake_nvml.lib_path) == 2  # two for GPU 0, none for GPU 1
        first = sampler.sample()
        second = sampler.sample()
        fake_nvml.set_sm_activity(0, 80.25)
        fake_nvml.write()
        third = sampler.sample()
        fake_nvml.set_sm_activity(0, 250)  # out of range: kept to 0..100
        fake_nvml.write()
        fourth = sampler.sample()
    assert gpm_samples_allocated(fake_nvml.lib_path) == 0  # freed at close
    assert [[g.sm_activity for g in t.gpus] for t in (first, second, third, fourth)] == [
        [None, None],
        [37.5, None],
        [80.25, None],
        [100.0, None],
    ]
    assert "GPM on 0" in caplog.text


def test_a_driver_without_gpm_gives_none_logged_once(fake_nvml, caplog):
    fake_nvml.add_gpu(gpm=True, sm_activity=50)
    fake_nvml.set_unsupported(0, "gpm")
    with caplog.at_level(logging.INFO), open_sampler(fake_nvml) as sampler:
        ticks = [sampler.sample() for _ in range(3)]
        assert gpm_samples_allocated(fake_nvml.lib_path) == 0
    assert all(t.gpus[0].sm_activity is None and t.gpus[0].healthy for t in ticks)
    assert caplog.text.count("no GPM SM activity") == 1


def test_gpm_sampling_that_stops_working_leaves_sm_activity_empty(fake_nvml, caplog):
    fake_nvml.add_gpu(gpm=True, sm_activity=50, util=10)
    with caplog.at_level(logging.INFO), open_sampler(fake_nvml) as sampler:
        sampler.sample()
        fake_nvml.set_gpm(0, False)  # nvmlGpmSampleGet: Not Supported from now on
        fake_nvml.write()
        off = [sampler.sample() for _ in range(2)]
        fake_nvml.set_gpm(0, True, sm_activity=60)
        fake_nvml.write()
        on = [sampler.sample() for _ in range(2)]
    assert [(t.gpus[0].sm_activity, t.gpus[0].healthy) for t in off] == [(None, True)] * 2
    # the sample before the gap is never compared: the first tick after it starts again
    assert [t.gpus[0].sm_activity for t in on] == [None, 60.0]
    assert caplog.text.count("nvmlGpmSampleGet") == 1


def test_a_lost_gpu_starts_its_gpm_samples_again(fake_nvml):
    fake_nvml.add_gpu(gpm=True, sm_activity=20)
    with open_sampler(fake_nvml) as sampler:
        before = [sampler.sample().gpus[0].sm_activity for _ in range(2)]
        fake_nvml.set_lost(0)
        fake_nvml.write()
        lost = sampler.sample().gpus[0]
        fake_nvml.set_lost(0, False)
        fake_nvml.write()
        after = [sampler.sample().gpus[0].sm_activity for _ in range(2)]
        assert gpm_samples_allocated(fake_nvml.lib_path) == 2  # kept, not allocated again
    assert before == [None, 20.0]
    assert (lost.healthy, lost.sm_activity) == (False, None)
    assert after == [None, 20.0]


def test_a_gpu_that_loses_gpm_on_reattach_frees_its_samples(fake_nvml):
    fake_nvml.add_gpu(gpm=True, sm_activity=20)
    with open_sampler(fake_nvml) as sampler:
        sampler.sample()
        fake_nvml.set_lost(0)
        fake_nvml.write()
        sampler.sample()
        fake_nvml.set_lost(0, False)
        fake_nvml.set_gpm(0, False)  # another GPU at this index, say
        fake_nvml.write()
        assert [sampler.sample().gpus[0].sm_activity for _ in range(2)] == [None, None]
        assert gpm_samples_allocated(fake_nvml.lib_path) == 0


def test_gpm_samples_that_cannot_be_allocated_mean_no_gpm(fake_nvml, monkeypatch, caplog):
    import pynvml

    real = pynvml.nvmlGpmSampleAlloc
    calls = []

    def second_fails():
        calls.append(1)
        if len(calls) == 2:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_MEMORY)
        return real()

    fake_nvml.add_gpu(gpm=True, sm_activity=20)
    monkeypatch.setattr(pynvml, "nvmlGpmSampleAlloc", second_fails)
    with caplog.at_level(logging.INFO), open_sampler(fake_nvml) as sampler:
        assert gpm_samples_allocated(fake_nvml.lib_path) == 0  # the first one given back
        ticks = [sampler.sample().gpus[0] for _ in range(2)]
    assert [(g.sm_activity, g.healthy) for g in ticks] == [(None, True)] * 2
    assert "no GPM SM activity" in caplog.text


def test_a_metric_the_driver_does_not_give_is_none(fake_nvml, monkeypatch):
    import pynvml

    fake_nvml.add_gpu(gpm=True, sm_activity=20)
    # a driver that knows GPM but not this metric answers it with a per-metric error
    monkeypatch.setattr(pynvml, "NVML_GPM_METRIC_SM_UTIL", pynvml.NVML_GPM_METRIC_SM_OCCUPANCY)
    with open_sampler(fake_nvml) as sampler:
        assert [sampler.sample().gpus[0].sm_activity for _ in range(3)] == [None] * 3


# --- simulated GPUs --------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


def write_json(path, data):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def test_simulated_energy_is_power_over_the_clock_exactly(tmp_path):
    inventory = parse_simulated("2")
    a, b = (gpu.uuid for gpu in inventory)
    path = tmp_path / "util.json"
    write_json(path, {a: 50, b: {"utilization": 10, "power_watts": 123.456}})
    clock = Clock()
    sampler = SimulatedSampler(inventory, path, clock=clock)
    with sampler:
        first = sampler.sample()
        clock.now += timedelta(seconds=1, microseconds=1)
        second = sampler.sample()
        write_json(path, {a: 0})
        clock.now += timedelta(milliseconds=1500)
        third = sampler.sample()
        clock.now -= timedelta(seconds=10)  # a clock that goes back adds nothing
        fourth = sampler.sample()
    assert [g.energy_mj for g in first.gpus] == [0, 0]
    assert [g.power_watts for g in second.gpus] == [360.0, 123.456]
    # 360 W for 1.000001 s = 360000.36 mJ; 123.456 W: 123456.123456 mJ (whole mJ shown)
    assert [g.energy_mj for g in second.gpus] == [360_000, 123_456]
    # then 60 W for 1.5 s on both (b is missing from the file now: 0 %)
    assert [g.energy_mj for g in third.gpus] == [360_000 + 90_000, 123_456 + 90_000]
    assert [g.energy_mj for g in fourth.gpus] == [g.energy_mj for g in third.gpus]
    assert all(g.sm_activity is None for g in first.gpus + fourth.gpus)
    assert first.processes == ()


def test_simulated_energy_without_open_starts_at_the_first_sample(tmp_path):
    clock = Clock()
    sampler = SimulatedSampler(parse_simulated("1"), None, clock=clock)
    assert sampler.sample().gpus[0].energy_mj == 0
    clock.now += timedelta(seconds=2)
    assert sampler.sample().gpus[0].energy_mj == 120_000  # idle: 60 W


def test_simulated_power_must_be_a_number(tmp_path, caplog):
    inventory = parse_simulated("1")
    (uuid,) = (gpu.uuid for gpu in inventory)
    path = tmp_path / "util.json"
    write_json(path, {uuid: {"utilization": 10, "power_watts": "high"}})
    with caplog.at_level(logging.WARNING):
        reading = SimulatedSampler(inventory, path).sample().gpus[0]
    assert "power_watts" in caplog.text
    assert (reading.utilization, reading.power_watts) == (0, 60.0)


def test_the_energy_counter_in_metrics_per_gpu():
    from jupyter_gpu_meter.sampler import GPUReading, Tick
    from jupyter_gpu_meter.service.metrics import exposition, metric_families

    tick = Tick(
        T0,
        (
            GPUReading("GPU-A", 0, "NVIDIA H100", 50, 0, 1, 300.0, energy_mj=123_456_789),
            GPUReading("GPU-B", 1, "NVIDIA T4", 50, 0, 1),  # no counter: no sample
        ),
        (),
        0.001,
    )
    text = exposition(metric_families(tick, {}, {}, None)).decode()
    assert "# TYPE jupyter_gpu_meter_gpu_energy_joules_total counter" in text
    assert (
        'jupyter_gpu_meter_gpu_energy_joules_total{index="0",model="NVIDIA H100",'
        'node="",uuid="GPU-A"} 123456.789' in text
    )
    assert 'energy_joules_total{index="1"' not in text
