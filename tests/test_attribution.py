"""Where a GPU process runs (container / host / unknown) and its name: fake /proc trees,
real processes this test starts, a real process in a real Docker container, and the
NVML sampler passing it on per process with the stand-in driver library."""

import subprocess
import sys
import uuid

import pytest

from jupyter_gpu_meter.sampler import (
    WHERE_CONTAINER,
    WHERE_HOST,
    WHERE_UNKNOWN,
    Attribution,
    ContainerLookup,
    NVMLSampler,
    attribute_pid,
    container_of_pid,
)
from tests.hub import IMAGE
from tests.metering import wait_until

C1 = "c" * 64
C2 = "d" * 64
HOST_CGROUP = "0::/user.slice/user-1000.slice/session-3.scope\n"


def fake_proc(root, pid, cgroup, start=4242, comm="python"):
    """/proc/<pid>/stat (name in field 2, start time in field 22) and /proc/<pid>/cgroup."""
    folder = root / str(pid)
    folder.mkdir(parents=True, exist_ok=True)
    fields = ["S"] + ["0"] * 18 + [str(start), "0", "0"]  # fields 3..24
    (folder / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
    (folder / "cgroup").write_text(cgroup)
    return str(root)


def test_a_container_process_a_host_process_and_an_unreadable_pid(tmp_path):
    root = fake_proc(tmp_path, 10, f"0::/system.slice/docker-{C1}.scope\n", comm="torchrun")
    fake_proc(tmp_path, 11, HOST_CGROUP, comm="Xorg")
    lookup = ContainerLookup()
    assert lookup.attribution(10, root) == Attribution(C1, WHERE_CONTAINER, "torchrun")
    assert lookup.attribution(11, root) == Attribution(None, WHERE_HOST, "Xorg")
    # not in this /proc: it ended, or it lives in another PID namespace
    assert lookup.attribution(12, root) == Attribution(None, WHERE_UNKNOWN, "")
    assert lookup.attribution(0, root).where == WHERE_UNKNOWN
    assert lookup.attribution(-5, root).where == WHERE_UNKNOWN


def test_the_name_is_read_whole_from_stat_even_with_spaces_and_parentheses(tmp_path):
    root = fake_proc(tmp_path, 77, HOST_CGROUP, comm="pt_main (th) x")
    assert attribute_pid(77, root) == Attribution(None, WHERE_HOST, "pt_main (th) x")


def test_a_process_whose_cgroup_cannot_be_read_is_unknown(tmp_path):
    root = fake_proc(tmp_path, 20, HOST_CGROUP)
    (tmp_path / "20" / "cgroup").unlink()
    assert ContainerLookup().attribution(20, root).where == WHERE_UNKNOWN


@pytest.mark.parametrize("stat", ["", "20 (python S 0 0", "20 (python) S 1 2 3\n"])
def test_a_stat_file_that_cannot_be_parsed_is_unknown(tmp_path, stat):
    root = fake_proc(tmp_path, 20, HOST_CGROUP)
    (tmp_path / "20" / "stat").write_text(stat)
    assert ContainerLookup().attribution(20, root) == Attribution(None, WHERE_UNKNOWN, "")


def test_a_process_replaced_between_two_reads_is_unknown_and_not_cached(tmp_path, monkeypatch):
    """The process ends, and its PID goes to another, between the stat and the cgroup read."""
    from jupyter_gpu_meter.sampler import attribution

    root = fake_proc(tmp_path, 30, f"0::/docker/{C1}\n", start=1)

    def open_after_a_swap(path, *args, **kwargs):
        if str(path).endswith("/cgroup"):
            fake_proc(tmp_path, 30, HOST_CGROUP, start=2)
        return open(path, *args, **kwargs)

    lookup = ContainerLookup()
    monkeypatch.setattr(attribution, "open", open_after_a_swap, raising=False)
    assert lookup.attribution(30, root) == Attribution(None, WHERE_UNKNOWN, "")
    monkeypatch.delattr(attribution, "open")
    assert lookup.attribution(30, root) == Attribution(None, WHERE_HOST, "python")


def test_cached_per_process_a_reused_pid_is_a_new_process(tmp_path):
    lookup = ContainerLookup()
    root = fake_proc(tmp_path, 40, f"0::/docker/{C1}\n", start=100, comm="python")
    assert lookup.attribution(40, root) == Attribution(C1, WHERE_CONTAINER, "python")
    (tmp_path / "40" / "cgroup").write_text(HOST_CGROUP)
    assert lookup.attribution(40, root).container_id == C1  # same start time: cached
    fake_proc(tmp_path, 40, HOST_CGROUP, start=100, comm="torchrun")  # an exec: a new name
    assert lookup.attribution(40, root) == Attribution(C1, WHERE_CONTAINER, "torchrun")
    assert lookup(40, root) == C1  # calling it gives the container id, as before
    fake_proc(tmp_path, 40, f"0::/docker/{C2}\n", start=200, comm="bash")
    assert lookup.attribution(40, root) == Attribution(C2, WHERE_CONTAINER, "bash")
    lookup.clear()
    assert lookup.attribution(40, root) == Attribution(C2, WHERE_CONTAINER, "bash")


def test_a_real_host_process_and_one_that_ended():
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert attribute_pid(child.pid) == Attribution(None, WHERE_HOST, "sleep")
    finally:
        child.kill()
        child.wait()
    assert attribute_pid(child.pid).where in (WHERE_UNKNOWN, WHERE_HOST)  # reaped, maybe reused
    with open("/proc/sys/kernel/pid_max") as f:
        beyond = int(f.read()) + 1
    assert attribute_pid(beyond) == Attribution(None, WHERE_UNKNOWN, "")


def test_a_real_process_in_a_real_docker_container(docker_client):
    name = f"jgm-test-attr-{uuid.uuid4().hex[:8]}"
    container = docker_client.containers.run(
        IMAGE, ["sleep", "60"], name=name, detach=True, remove=False, network_mode="none"
    )
    try:
        container.reload()
        pid = container.attrs["State"]["Pid"]
        assert pid > 0
        # the engine reports the container started while runc may still be exec'ing
        # `sleep` in it (its name is runc's until then): wait for the exec
        wait_until(lambda: attribute_pid(pid).name == "sleep", 30, "sleep to run")
        assert attribute_pid(pid) == Attribution(container.id, WHERE_CONTAINER, "sleep")
        assert container_of_pid(pid) == container.id
    finally:
        container.remove(force=True)


# --- the NVML sampler passes it on -----------------------------------------------------


def test_the_sampler_gives_each_process_where_it_runs_and_its_name(fake_nvml, tmp_path):
    proc = tmp_path / "proc"
    fake_proc(proc, 1001, f"0::/docker/{C1}\n", comm="python3")
    fake_proc(proc, 1002, HOST_CGROUP, comm="Xorg")
    fake_nvml.add_gpu()
    fake_nvml.add_gpu()
    fake_nvml.add_process(0, 1001, used_memory=1)
    fake_nvml.add_process(1, 1001, used_memory=2)  # the same process on two GPUs
    fake_nvml.add_process(1, 1002, used_memory=3)
    fake_nvml.add_process(1, 1003, used_memory=4)  # another PID namespace: not in our /proc
    fake_nvml.write()
    with NVMLSampler(proc_root=str(proc)) as sampler:
        ticks = [sampler.sample() for _ in range(2)]
    for tick in ticks:
        assert [(p.pid, p.container_id, p.where, p.name) for p in tick.processes] == [
            (1001, C1, WHERE_CONTAINER, "python3"),
            (1001, C1, WHERE_CONTAINER, "python3"),
            (1002, None, WHERE_HOST, "Xorg"),
            (1003, None, WHERE_UNKNOWN, ""),
        ]


def test_a_pid_listed_in_the_previous_tick_is_not_read_again(fake_nvml, tmp_path):
    proc = tmp_path / "proc"
    fake_proc(proc, 1001, f"0::/docker/{C1}\n", start=1)
    fake_nvml.add_gpu()
    fake_nvml.add_process(0, 1001, used_memory=1)
    fake_nvml.write()
    with NVMLSampler(proc_root=str(proc)) as sampler:
        first = sampler.sample()
        (proc / "1001" / "stat").unlink()  # a read now would find nothing
        second = sampler.sample()
    assert [(p.container_id, p.where) for p in first.processes + second.processes] == [
        (C1, WHERE_CONTAINER)
    ] * 2


def test_real_processes_the_test_starts_one_running_one_ended(fake_nvml):
    ended = subprocess.Popen(["true"])
    ended.wait()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    fake_nvml.add_gpu()
    fake_nvml.add_process(0, child.pid, used_memory=5 << 20)
    fake_nvml.add_sample(0, child.pid, 1_000, sm=42)
    fake_nvml.add_sample(0, ended.pid, 900, sm=7)  # it left a sample, then ended
    fake_nvml.write()
    try:
        with NVMLSampler() as sampler:
            running, gone = sampler.sample().processes
    finally:
        child.kill()
        child.wait()
    assert (running.pid, running.where, running.container_id) == (child.pid, WHERE_HOST, None)
    assert running.name.startswith("python")
    assert (running.used_memory_bytes, running.sm_utilization) == (5 << 20, 42)
    assert (gone.pid, gone.where, gone.name, gone.used_memory_bytes, gone.sm_utilization) == (
        ended.pid,
        WHERE_UNKNOWN,
        "",
        None,
        7,
    )
