"""The GPU sampler: the real nvidia-ml-py bindings against the stand-in driver library,
PID -> container from fake /proc trees, simulated GPUs, and the per-minute rollups."""

import asyncio
import json
import logging
import os
import threading
from datetime import datetime, timedelta, timezone

import pytest
from traitlets import TraitError

from jupyter_gpu_meter import GPUInventory
from jupyter_gpu_meter.gpus import GPU, SIMULATED_ENV, Inventory, parse_simulated
from jupyter_gpu_meter.sampler import (
    SIMULATED_UTILIZATION_ENV,
    ContainerLookup,
    GPUReading,
    GPUSampler,
    NVMLSampler,
    RollupAggregator,
    RollupRow,
    SamplerUnavailable,
    SimulatedSampler,
    Tick,
    container_of_pid,
    sample_in_executor,
)

T0 = datetime(2026, 11, 27, 16, 0, 0, tzinfo=timezone.utc)
C1 = "a" * 64
C2 = "b" * 64


# --- fake /proc -------------------------------------------------------------------


def fake_proc(root, pid, cgroup, start=4242, comm="python"):
    """/proc/<pid>/stat (start time in field 22) and /proc/<pid>/cgroup under ``root``."""
    folder = root / str(pid)
    folder.mkdir(parents=True, exist_ok=True)
    fields = ["S"] + ["0"] * 18 + [str(start), "0", "0"]  # fields 3..24
    (folder / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
    (folder / "cgroup").write_text(cgroup)
    return str(root)


CGROUP_V1 = "".join(
    f"{n}:{controller}:/docker/{C1}\n"
    for n, controller in enumerate(["cpu,cpuacct", "memory", "pids", "devices"], start=1)
)
CGROUP_V2_SYSTEMD = f"0::/system.slice/docker-{C1}.scope\n"
CGROUP_V2_CGROUPFS = f"0::/docker/{C1}\n"


@pytest.mark.parametrize(
    "cgroup, expected",
    [
        pytest.param(CGROUP_V1, C1, id="v1"),
        pytest.param(f"12:pids:/system.slice/docker-{C1}.scope\n0::/\n", C1, id="v1-systemd"),
        pytest.param(CGROUP_V2_SYSTEMD, C1, id="v2-systemd"),
        pytest.param(CGROUP_V2_CGROUPFS, C1, id="v2-cgroupfs"),
        pytest.param(f"0::/../../system.slice/docker-{C1}.scope\n", C1, id="v2-relative"),
        pytest.param(f"0::/docker/{C2}/docker/{C1}\n", C1, id="docker-in-docker"),
        pytest.param(f"0::/docker/{C1}/init.scope\n", C1, id="v2-nested-child"),
        pytest.param("0::/user.slice/user-1000.slice/session-3.scope\n", None, id="host"),
        pytest.param(
            f"0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{C1}.scope\n",
            None,
            id="kubepods",
        ),
        pytest.param(f"0::/docker/{C1[:12]}\n", None, id="short-id"),
        pytest.param("0::/\n", None, id="root"),
        pytest.param("", None, id="empty"),
        pytest.param("garbage without colons\n\n", None, id="garbage"),
    ],
)
def test_container_of_pid(tmp_path, cgroup, expected):
    root = fake_proc(tmp_path, 1234, cgroup)
    assert container_of_pid(1234, root) == expected


def test_container_of_a_missing_or_unreadable_pid_is_none(tmp_path):
    root = fake_proc(tmp_path, 1234, CGROUP_V1)
    assert container_of_pid(999999, root) is None
    assert container_of_pid(0, root) is None
    (tmp_path / "1234" / "cgroup").unlink()
    assert ContainerLookup()(1234, root) is None
    (tmp_path / "1234" / "stat").write_text("garbage")
    assert container_of_pid(1234, root) is None


def test_container_of_pid_reads_the_start_time_after_an_odd_command_name(tmp_path):
    lookup = ContainerLookup()
    root = fake_proc(tmp_path, 77, CGROUP_V1, start=10, comm="a) b (c")
    assert lookup(77, root) == C1
    fake_proc(tmp_path, 77, CGROUP_V2_SYSTEMD.replace(C1, C2), start=11, comm="a) b (c")
    assert lookup(77, root) == C2  # a new start time is a new process


def test_container_of_pid_is_cached_per_process_and_a_reused_pid_is_seen(tmp_path):
    lookup = ContainerLookup()
    root = fake_proc(tmp_path, 50, CGROUP_V2_CGROUPFS, start=100)
    assert lookup(50, root) == C1
    (tmp_path / "50" / "cgroup").write_text(f"0::/docker/{C2}\n")
    assert lookup(50, root) == C1  # same process: from the cache
    fake_proc(tmp_path, 50, "0::/user.slice\n", start=200)  # the PID went to another process
    assert lookup(50, root) is None


def test_the_container_cache_is_bounded(tmp_path):
    lookup = ContainerLookup(maxsize=2)
    for pid in (1, 2, 3):
        fake_proc(tmp_path, pid, CGROUP_V2_CGROUPFS)
        assert lookup(pid, str(tmp_path)) == C1
    (tmp_path / "1" / "cgroup").write_text(f"0::/docker/{C2}\n")
    assert lookup(1, str(tmp_path)) == C2  # pid 1 was the least recently used: dropped


def test_container_of_this_very_process_does_not_crash():
    found = container_of_pid(os.getpid())
    assert found is None or (len(found) == 64 and int(found, 16) >= 0)
    assert container_of_pid(1) is None or len(container_of_pid(1)) == 64


# --- NVML: readings ------------------------------------------------------------------


def open_sampler(fake_nvml, **kwargs):
    fake_nvml.write()
    sampler = NVMLSampler(**kwargs)
    sampler.open()
    return sampler


def test_readings_per_gpu(fake_nvml, tmp_path):
    fake_nvml.set_driver("550.54.15")
    fake_nvml.add_gpu(name="NVIDIA H100 80GB HBM3", util=37, memory_used=2 * 1024**3)
    fake_nvml.add_gpu(
        name="NVIDIA L4", memory_total=24152899584, util=0, power_mw=16500, temperature=41
    )
    fake_nvml.set_energy(0, 2**40 + 7)  # mJ since the driver loaded: beyond 32 bits
    fake_nvml.set_power(0, 250123)
    fake_nvml.set_temperature(0, 55)
    sampler = open_sampler(fake_nvml, clock=lambda: T0)
    try:
        assert sampler.driver_version == "550.54.15"
        tick = sampler.sample()
    finally:
        sampler.close()
    assert tick.at == T0 and tick.duration_s >= 0 and tick.processes == ()
    assert tick.gpus == (
        GPUReading(
            fake_nvml.uuids[0],
            0,
            "NVIDIA H100 80GB HBM3",
            37,
            2 * 1024**3,
            85520809984,
            250.123,
            55,
            energy_mj=2**40 + 7,
        ),
        GPUReading(fake_nvml.uuids[1], 1, "NVIDIA L4", 0, 0, 24152899584, 16.5, 41, energy_mj=0),
    )
    assert all(g.sm_activity is None for g in tick.gpus)  # no GPM on these
    assert all(g.healthy and g.problem == "" for g in tick.gpus)


def test_readings_follow_the_driver_between_ticks(fake_nvml):
    fake_nvml.add_gpu(util=10)
    with open_sampler(fake_nvml) as sampler:
        assert sampler.sample().gpus[0].utilization == 10
        fake_nvml.set_utilization(0, gpu=95)
        fake_nvml.set_memory(0, used=123456789)
        fake_nvml.write()
        reading = sampler.sample().gpus[0]
    assert (reading.utilization, reading.memory_used_bytes) == (95, 123456789)


def test_running_processes_their_memory_and_container(fake_nvml, tmp_path):
    proc = tmp_path / "proc"
    fake_proc(proc, 1001, CGROUP_V2_SYSTEMD)
    fake_proc(proc, 1002, CGROUP_V1.replace(C1, C2))
    fake_nvml.add_gpu()
    fake_nvml.add_gpu()
    fake_nvml.add_process(0, 1001, used_memory=3 * 1024**3)
    fake_nvml.add_process(1, 1002, used_memory=1024**3)
    fake_nvml.add_process(1, 1003)  # memory not available, not in our /proc
    with open_sampler(fake_nvml, proc_root=str(proc)) as sampler:
        processes = sampler.sample().processes
    uuid0, uuid1 = fake_nvml.uuids
    assert [(p.gpu_uuid, p.pid, p.container_id, p.used_memory_bytes) for p in processes] == [
        (uuid0, 1001, C1, 3 * 1024**3),
        (uuid1, 1002, C2, 1024**3),
        (uuid1, 1003, None, None),
    ]
    assert all(p.sm_utilization is None for p in processes)  # no samples: NotFound


def test_a_pid_that_leaves_the_gpus_and_comes_back_is_looked_up_again(fake_nvml, tmp_path):
    proc = tmp_path / "proc"
    fake_proc(proc, 1001, CGROUP_V2_SYSTEMD, start=1)
    fake_nvml.add_gpu()
    fake_nvml.add_process(0, 1001, used_memory=1)
    with open_sampler(fake_nvml, proc_root=str(proc)) as sampler:
        first = sampler.sample()
        fake_nvml.remove_process(0, 1001)
        fake_nvml.write()
        assert sampler.sample().processes == ()
        fake_proc(proc, 1001, CGROUP_V2_CGROUPFS.replace(C1, C2), start=2)  # PID reused
        fake_nvml.add_process(0, 1001, used_memory=1)
        fake_nvml.write()
        again = sampler.sample()
    assert [p.container_id for p in first.processes + again.processes] == [C1, C2]


def test_process_list_falls_back_to_the_v2_struct(fake_nvml, monkeypatch, caplog):
    import pynvml

    def no_v3(handle):
        raise pynvml.NVMLLibraryMismatchError("no nvmlDeviceGetComputeRunningProcesses_v3")

    fake_nvml.add_gpu()
    fake_nvml.add_process(0, 1001, used_memory=1000)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", no_v3)
    with caplog.at_level(logging.INFO), open_sampler(fake_nvml) as sampler:
        ticks = [sampler.sample() for _ in range(2)]
    assert [[(p.pid, p.used_memory_bytes) for p in t.processes] for t in ticks] == [
        [(1001, 1000)]
    ] * 2
    assert all(t.gpus[0].healthy for t in ticks)
    assert caplog.text.count("using v2") == 1


# --- NVML: process utilization samples -------------------------------------------------


def sm_by_pid(tick):
    return {(p.gpu_uuid, p.pid): p.sm_utilization for p in tick.processes}


def test_process_samples_are_each_counted_once_per_gpu(fake_nvml):
    fake_nvml.add_gpu()
    fake_nvml.add_gpu()
    uuid0, uuid1 = fake_nvml.uuids
    fake_nvml.add_process(0, 11, used_memory=1)
    fake_nvml.add_process(1, 22, used_memory=1)
    # GPU 1's clock runs far ahead: one last_seen for both GPUs would drop GPU 0's samples
    fake_nvml.add_sample(0, 11, 1_000, sm=10)
    fake_nvml.add_sample(0, 11, 2_000, sm=30)
    fake_nvml.add_sample(1, 22, 9_000_000, sm=70)
    with open_sampler(fake_nvml) as sampler:
        first = sampler.sample()
        fake_nvml.add_sample(0, 11, 3_000, sm=60)
        fake_nvml.add_sample(0, 12, 3_500, sm=40)  # a process that already left the GPU
        fake_nvml.write()
        second = sampler.sample()
        third = sampler.sample()  # nothing new: NotFound on both GPUs
        fake_nvml.add_sample(1, 22, 9_000_500, sm=90)
        fake_nvml.add_sample(1, 22, 9_001_000, sm=100)
        fake_nvml.add_sample(0, 11, 2_500, sm=99)  # older than what was seen: never counted
        fake_nvml.write()
        fourth = sampler.sample()
    assert sm_by_pid(first) == {(uuid0, 11): 20, (uuid1, 22): 70}
    assert sm_by_pid(second) == {(uuid0, 11): 60, (uuid0, 12): 40, (uuid1, 22): None}
    gone = [p for p in second.processes if p.pid == 12]
    assert [(p.used_memory_bytes, p.container_id) for p in gone] == [(None, None)]
    assert sm_by_pid(third) == {(uuid0, 11): None, (uuid1, 22): None}
    assert sm_by_pid(fourth) == {(uuid0, 11): None, (uuid1, 22): 95}
    assert all(g.healthy for t in (first, second, third, fourth) for g in t.gpus)


def test_process_samples_as_plain_objects_are_read_too(fake_nvml, monkeypatch):
    """The tick reads ctypes fields directly; bindings that return plain objects work too."""
    import pynvml

    real = pynvml.nvmlDeviceGetProcessUtilization

    def friendly(handle, since):
        return [pynvml.nvmlStructToFriendlyObject(s) for s in real(handle, since)]

    fake_nvml.add_gpu()
    fake_nvml.add_process(0, 11, used_memory=1)
    fake_nvml.add_sample(0, 11, 1_000, sm=10)
    fake_nvml.add_sample(0, 11, 2_000, sm=30)
    (uuid,) = fake_nvml.uuids
    with open_sampler(fake_nvml) as sampler:
        direct = sampler.sample()
        monkeypatch.setattr(pynvml, "nvmlDeviceGetProcessUtilization", friendly)
        fake_nvml.add_sample(0, 11, 3_000, sm=50)
        fake_nvml.write()
        plain = sampler.sample()
    assert sm_by_pid(direct) == {(uuid, 11): 20}
    assert sm_by_pid(plain) == {(uuid, 11): 50}


def test_process_utilization_not_supported_leaves_it_empty(fake_nvml):
    fake_nvml.add_gpu()
    fake_nvml.add_process(0, 11, used_memory=5)
    fake_nvml.add_sample(0, 11, 1_000, sm=10)
    fake_nvml.set_unsupported(0, "process_utilization")
    with open_sampler(fake_nvml) as sampler:
        tick = sampler.sample()
    assert [(p.pid, p.used_memory_bytes, p.sm_utilization) for p in tick.processes] == [
        (11, 5, None)
    ]
    assert tick.gpus[0].healthy


def test_a_process_list_that_grew_between_two_calls_is_read_at_the_next_tick(fake_nvml, caplog):
    fake_nvml.add_gpu()
    fake_nvml.add_process(0, 11, used_memory=5)
    fake_nvml.add_sample(0, 12, 1_000, sm=40)  # a process that left a sample
    fake_nvml.set_process_list_growth(0, 8)  # more than pynvml's room: 2 × 1 + 5
    with open_sampler(fake_nvml) as sampler:
        grew = sampler.sample()
        fake_nvml.set_process_list_growth(0, 0)
        fake_nvml.write()
        settled = sampler.sample()
    # that tick's list is empty, not an error: the GPU is healthy, its samples counted
    assert grew.gpus[0].healthy and grew.gpus[0].utilization is not None
    assert [(p.pid, p.sm_utilization) for p in grew.processes] == [(12, 40)]
    assert [(p.pid, p.used_memory_bytes) for p in settled.processes] == [(11, 5)]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- NVML: errors ----------------------------------------------------------------------


def test_a_lost_gpu_is_unhealthy_the_other_still_read_logged_once(fake_nvml, caplog):
    fake_nvml.add_gpu(util=10)
    fake_nvml.add_gpu(util=20)
    fake_nvml.add_process(0, 11, used_memory=1)
    uuid0, uuid1 = fake_nvml.uuids
    with caplog.at_level(logging.INFO), open_sampler(fake_nvml) as sampler:
        assert all(g.healthy for g in sampler.sample().gpus)
        fake_nvml.set_lost(0)
        fake_nvml.write()
        lost = [sampler.sample() for _ in range(4)]
        fake_nvml.set_lost(0, False)
        fake_nvml.set_utilization(0, gpu=55)
        fake_nvml.write()
        back = [sampler.sample() for _ in range(3)]
        fake_nvml.set_lost(0)
        fake_nvml.write()
        again = sampler.sample()
    for tick in lost:
        gpu0, gpu1 = tick.gpus
        assert (gpu0.uuid, gpu0.healthy, gpu0.utilization) == (uuid0, False, None)
        assert "GPU is lost" in gpu0.problem
        assert (gpu1.uuid, gpu1.healthy, gpu1.utilization) == (uuid1, True, 20)
        assert tick.processes == ()
    for tick in back:
        assert [(g.healthy, g.problem, g.utilization) for g in tick.gpus] == [
            (True, "", 55),
            (True, "", 20),
        ]
        assert [p.pid for p in tick.processes] == [11]
    assert not again.gpus[0].healthy
    unhealthy = [r for r in caplog.records if "unhealthy" in r.getMessage()]
    assert [r.levelno for r in unhealthy] == [logging.WARNING] * 2  # once lost, once lost again
    assert all(uuid0 in r.getMessage() and "GPU is lost" in r.getMessage() for r in unhealthy)
    recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(recovered) == 1 and uuid0 in recovered[0].getMessage()


def test_a_gpu_lost_at_open_takes_its_uuid_from_the_inventory(fake_nvml, caplog):
    fake_nvml.add_gpu(name="NVIDIA L4")
    fake_nvml.add_gpu(name="NVIDIA L4")
    fake_nvml.set_lost(1)
    inventory = Inventory(
        tuple(GPU(uuid, i, "NVIDIA L4") for i, uuid in enumerate(fake_nvml.uuids))
    )
    with caplog.at_level(logging.INFO), open_sampler(fake_nvml, inventory=inventory) as sampler:
        first = sampler.sample()
        fake_nvml.set_lost(1, False)
        fake_nvml.write()
        second = sampler.sample()
    assert [(g.uuid, g.healthy) for g in first.gpus] == [
        (fake_nvml.uuids[0], True),
        (fake_nvml.uuids[1], False),
    ]
    assert [(g.uuid, g.model, g.healthy) for g in second.gpus] == [
        (uuid, "NVIDIA L4", True) for uuid in fake_nvml.uuids
    ]
    assert caplog.text.count("unhealthy") == 2  # the open() summary and the warning
    assert caplog.text.count("recovered") == 1


def test_a_gpu_lost_at_open_without_inventory_is_named_by_index(fake_nvml):
    fake_nvml.add_gpu()
    fake_nvml.set_lost(0)
    with open_sampler(fake_nvml) as sampler:
        (reading,) = sampler.sample().gpus
    assert (reading.uuid, reading.index, reading.healthy) == ("unknown-index-0", 0, False)


@pytest.mark.parametrize(
    "call, field", [("power", "power_watts"), ("temperature", "temperature_c")]
)
def test_a_reading_the_gpu_does_not_support_is_none_not_unhealthy(fake_nvml, caplog, call, field):
    fake_nvml.add_gpu(util=33)
    fake_nvml.set_unsupported(0, call)
    with caplog.at_level(logging.INFO), open_sampler(fake_nvml) as sampler:
        ticks = [sampler.sample() for _ in range(3)]
    for tick in ticks:
        (gpu,) = tick.gpus
        assert getattr(gpu, field) is None
        assert (gpu.healthy, gpu.problem, gpu.utilization) == (True, "", 33)
    assert caplog.text.count("Not Supported") == 1


def test_an_unknown_error_marks_every_gpu_it_hits_and_clears(fake_nvml, caplog):
    fake_nvml.add_gpu()
    fake_nvml.add_gpu()
    with caplog.at_level(logging.INFO), open_sampler(fake_nvml) as sampler:
        state = fake_nvml.state_path.read_text()
        fake_nvml.state_path.write_text(state + "this line makes every call fail\n")
        broken = [sampler.sample() for _ in range(3)]
        fake_nvml.write()
        fixed = sampler.sample()
    for tick in broken:
        assert [(g.healthy, g.problem.split(" (")[0]) for g in tick.gpus] == [
            (False, "Unknown Error")
        ] * 2
    # the first failing call dropped the handle; the next ticks fail fetching it again
    assert broken[0].gpus[0].problem == "Unknown Error (nvmlDeviceGetUtilizationRates)"
    assert broken[1].gpus[0].problem == "Unknown Error (nvmlDeviceGetHandleByIndex)"
    assert all(g.healthy for g in fixed.gpus)
    assert caplog.text.count("unhealthy") == 2  # once per GPU
    assert caplog.text.count("recovered") == 2


def test_no_driver_means_sampler_unavailable(fake_nvml):
    # nothing written: the stand-in library answers like a machine without a driver
    sampler = NVMLSampler()
    with pytest.raises(SamplerUnavailable, match="no NVIDIA driver library: metering runtime only"):
        sampler.open()
    with pytest.raises(RuntimeError, match="before open"):
        sampler.sample()
    sampler.close()  # harmless


def test_close_shuts_nvml_down_once_and_reopening_counts_no_sample_twice(fake_nvml):
    import pynvml

    fake_nvml.add_gpu()
    fake_nvml.add_process(0, 11, used_memory=1)
    fake_nvml.add_sample(0, 11, 1_000, sm=10)
    sampler = open_sampler(fake_nvml)
    sampler.open()  # already open: no second nvmlInit
    assert sm_by_pid(sampler.sample()) == {(fake_nvml.uuids[0], 11): 10}
    sampler.close()
    sampler.close()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    sampler.open()
    fake_nvml.add_sample(0, 11, 2_000, sm=30)
    fake_nvml.write()
    assert sm_by_pid(sampler.sample()) == {(fake_nvml.uuids[0], 11): 30}
    sampler.close()


# --- simulated GPUs ----------------------------------------------------------------------


def write_json(path, data):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def test_simulated_sampler_reads_the_file_when_it_changes(tmp_path, caplog):
    gpus = parse_simulated("2xNVIDIA H100 80GB HBM3")
    a, b = (g.uuid for g in gpus)
    path = tmp_path / "utilization.json"
    sampler = SimulatedSampler(Inventory(gpus), path, clock=lambda: T0)
    with sampler:
        missing = sampler.sample()
        write_json(path, {a: 80})
        first = sampler.sample()
        write_json(path, {a: {"utilization": 30, "memory_used_bytes": 123}, b: 100})
        second = sampler.sample()
        path.write_text("{not json")
        with caplog.at_level(logging.WARNING):
            torn = sampler.sample()
            torn_again = sampler.sample()
        path.unlink()
        gone = sampler.sample()

    def values(tick):
        return [(g.utilization, g.memory_used_bytes) for g in tick.gpus]

    assert missing.at == T0 and missing.processes == ()
    assert values(missing) == [(0, 0), (0, 0)]
    assert values(first) == [(80, 0), (0, 0)]
    assert values(second) == [(30, 123), (100, 0)]
    assert values(torn) == values(torn_again) == values(second)  # kept the last good values
    assert caplog.text.count("unreadable") == 1
    assert values(gone) == [(0, 0), (0, 0)]
    assert [(g.model, g.memory_total_bytes, g.healthy) for g in first.gpus] == [
        ("NVIDIA H100 80GB HBM3", 80 * 1024**3, True)
    ] * 2


def test_simulated_sampler_says_what_the_file_should_hold(tmp_path, caplog):
    gpus = parse_simulated("1")
    path = tmp_path / "u.json"
    write_json(path, {gpus[0].uuid: "high"})
    with caplog.at_level(logging.WARNING):
        tick = SimulatedSampler(gpus, path).sample()
    assert tick.gpus[0].utilization == 0
    assert 'expected {"GPU-uuid": 80}' in caplog.text


def test_a_simulated_gpu_with_a_problem_reads_unhealthy(tmp_path, caplog):
    gpus = parse_simulated("2")
    a, b = (g.uuid for g in gpus)
    path = tmp_path / "u.json"
    sampler = SimulatedSampler(gpus, path)
    write_json(path, {a: {"utilization": 0, "problem": "GPU is lost"}, b: 40})
    lost = sampler.sample()
    write_json(path, {a: 10, b: 40})
    back = sampler.sample()
    write_json(path, {a: {"problem": 1}})
    with caplog.at_level(logging.WARNING):
        kept = sampler.sample()
    assert [(g.healthy, g.problem) for g in lost.gpus] == [(False, "GPU is lost"), (True, "")]
    assert [(g.healthy, g.problem) for g in back.gpus] == [(True, ""), (True, "")]
    assert [g.utilization for g in kept.gpus] == [10, 40]  # the last good values
    assert 'problem 1: give a text, e.g. "GPU is lost"' in caplog.text


async def test_sampling_runs_off_the_event_loop(tmp_path):
    threads = []

    def clock():
        threads.append(threading.get_ident())
        return T0

    sampler = SimulatedSampler(parse_simulated("1"), clock=clock)
    tick = await sample_in_executor(sampler)
    assert tick.gpus[0].utilization == 0
    assert threads and threads[0] != threading.get_ident()
    ticks = await asyncio.gather(*(sample_in_executor(sampler) for _ in range(5)))
    assert len(ticks) == 5


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 61, float("nan")])
def test_interval_must_be_positive_and_at_most_a_minute(bad):
    with pytest.raises(TraitError, match="more than 0 and at most 60 seconds"):
        GPUSampler(interval=bad)


def test_interval_and_file_settings(monkeypatch):
    monkeypatch.setenv(SIMULATED_UTILIZATION_ENV, "/tmp/u.json")
    config = GPUSampler(interval=0.5)
    assert (config.interval, config.simulated_utilization_file) == (0.5, "/tmp/u.json")
    assert GPUSampler().interval == 1.0


def test_make_sampler_picks_simulated_or_nvml(monkeypatch, tmp_path):
    monkeypatch.delenv(SIMULATED_ENV, raising=False)
    config = GPUSampler(simulated_utilization_file=str(tmp_path / "u.json"))
    simulated = config.make_sampler(GPUInventory(simulated="3"))
    assert isinstance(simulated, SimulatedSampler)
    assert len(simulated.gpus) == 3 and simulated.utilization_file == str(tmp_path / "u.json")
    nvml = config.make_sampler(GPUInventory())
    assert isinstance(nvml, NVMLSampler) and nvml.inventory is None
    static = config.make_sampler(GPUInventory(static=[{"uuid": "GPU-1", "model": "NVIDIA L4"}]))
    assert isinstance(static, NVMLSampler)
    assert [g.uuid for g in static.inventory.gpus] == ["GPU-1"]


# --- per-minute rollups -------------------------------------------------------------------------


def tick_at(at, *gpus):
    """A tick built by hand: gpus are (uuid, utilization, memory used)."""
    readings = tuple(
        GPUReading(uuid, i, "model", util, memory, 100)
        for i, (uuid, util, memory) in enumerate(gpus)
    )
    return Tick(at, readings, (), 0.001)


def test_rollups_mean_and_max_per_minute_over_a_moving_clock():
    rollup = RollupAggregator("writer-1")
    owners = {"GPU-a": C1, "GPU-b": C2, "GPU-c": None}
    utils = [10, 20, 90, 40]
    for second, util in enumerate(utils):
        at = T0 + timedelta(seconds=15 * second)
        rollup.add(
            tick_at(at, ("GPU-a", util, 1000 + second), ("GPU-b", None, 5), ("GPU-c", 99, 9)),
            owners,
        )
    # busy: 10% of the first interval (1 s), then of 2 s each (the longest a tick stands for)
    busy = 100 + 400 + 1800 + 800
    assert rollup.rows() == [RollupRow(C1, "GPU-a", T0, "writer-1", 4, 40.0, 90, 1003, busy)]


def test_rollups_split_at_minute_boundaries_and_are_cumulative():
    rollup = RollupAggregator("w")
    owners = {"GPU-a": C1, "GPU-b": C2}
    rollup.add(tick_at(T0 + timedelta(seconds=59.999), ("GPU-a", 50, 7)), owners)
    first = rollup.rows()
    assert first == [RollupRow(C1, "GPU-a", T0, "w", 1, 50.0, 50, 7, 500)]
    assert rollup.rows() == first  # asking again changes nothing
    rollup.add(tick_at(T0 + timedelta(seconds=60), ("GPU-a", 0, 3), ("GPU-b", 30, 4)), owners)
    rollup.add(tick_at(T0 + timedelta(seconds=61), ("GPU-a", 100, 2), ("GPU-b", 10, 8)), owners)
    minute = T0 + timedelta(minutes=1)
    assert rollup.rows() == [
        first[0],
        RollupRow(C1, "GPU-a", minute, "w", 2, 50.0, 100, 3, 1000),
        RollupRow(C2, "GPU-b", minute, "w", 2, 20.0, 30, 8, 100),
    ]
    assert rollup.rows(include_current=False) == first
    # a late tick for the first minute grows its row (cumulative)
    rollup.add(tick_at(T0 + timedelta(seconds=30), ("GPU-a", 100, 9)), owners)
    late = RollupRow(C1, "GPU-a", T0, "w", 2, 75.0, 100, 9, 500)  # a late tick stands for no time
    assert rollup.rows(include_current=False) == [late]
    assert all(row.minute.tzinfo is not None for row in rollup.rows())


def test_rollup_minutes_are_utc_truncations():
    rollup = RollupAggregator("w")
    plus_two = timezone(timedelta(hours=2))
    rollup.add(
        tick_at(datetime(2026, 11, 27, 18, 0, 42, 999999, plus_two), ("GPU-a", 5, 1)), {"GPU-a": C1}
    )
    (row,) = rollup.rows()
    assert row.minute == T0 and row.minute.utcoffset() == timedelta(0)


def test_forget_before_drops_written_minutes_and_ignores_late_ticks():
    rollup = RollupAggregator("w")
    owners = {"GPU-a": C1}
    for minute in range(3):
        assert rollup.add(
            tick_at(T0 + timedelta(minutes=minute), ("GPU-a", 10 * minute, 1)), owners
        )
    complete = rollup.rows(include_current=False)
    assert [row.minute for row in complete] == [T0, T0 + timedelta(minutes=1)]
    rollup.forget_before(complete[-1].minute + timedelta(minutes=1))
    assert [row.minute for row in rollup.rows()] == [T0 + timedelta(minutes=2)]
    assert not rollup.add(tick_at(T0 + timedelta(seconds=70), ("GPU-a", 100, 1)), owners)
    rollup.forget_before(T0)  # going back forgets nothing more and allows nothing back
    assert [row.samples for row in rollup.rows()] == [1]
    assert not rollup.add(tick_at(T0 + timedelta(seconds=70), ("GPU-a", 100, 1)), owners)
