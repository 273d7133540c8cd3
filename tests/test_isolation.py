"""The isolation check's rule (jupyter_gpu_meter.isolation): plain data in, breaches out."""

from __future__ import annotations

from jupyter_gpu_meter.isolation import (
    WHERE_CONTAINER,
    WHERE_HOST,
    WHERE_UNKNOWN,
    WHERE_UNMANAGED,
    Breach,
    find_breaches,
)
from jupyter_gpu_meter.sampler.readings import ProcessReading

A, B, CPU, OTHER = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
G0, G1, G2 = "GPU-0", "GPU-1", "GPU-2"
#: A holds GPU 0, B holds GPU 1, GPU 2 is free, CPU is a CPU-only server
OWNERS = {G0: A, G1: B}
ALLOWED = {A: frozenset({G0}), B: frozenset({G1}), CPU: frozenset()}


def process(gpu, pid, container=None, where=WHERE_UNKNOWN, name="python"):
    return ProcessReading(gpu, pid, container, 1 << 30, 50, where=where, name=name)


def breaches(*processes):
    return find_breaches(processes, OWNERS, ALLOWED)


def test_a_process_on_its_own_servers_gpu_is_never_a_breach():
    assert breaches(process(G0, 10, A, "container"), process(G1, 11, B, "container")) == []


def test_a_servers_process_on_another_servers_gpu_names_both():
    (breach,) = breaches(process(G1, 10, A, "container", name="torchrun"))
    assert breach == Breach(G1, 10, "torchrun", WHERE_CONTAINER, A, B)
    assert breach.key == (10, G1)


def test_a_servers_process_on_a_free_gpu_is_a_breach_without_a_holder():
    (breach,) = breaches(process(G2, 10, A, "container"))
    assert (breach.where, breach.container_id, breach.gpu_owner) == (WHERE_CONTAINER, A, None)


def test_a_cpu_only_servers_process_on_any_gpu_is_a_breach():
    found = breaches(process(G0, 20, CPU), process(G2, 21, CPU))
    assert [(b.gpu_uuid, b.where, b.container_id, b.gpu_owner) for b in found] == [
        (G0, WHERE_CONTAINER, CPU, A),
        (G2, WHERE_CONTAINER, CPU, None),
    ]


def test_a_host_process_on_an_allocated_gpu_is_a_breach():
    (breach,) = breaches(process(G0, 30, None, "host", name="nvidia-smi"))
    assert breach == Breach(G0, 30, "nvidia-smi", WHERE_HOST, None, A)


def test_a_host_process_on_a_free_gpu_is_not():
    assert breaches(process(G2, 30, None, "host"), process(G2, 31)) == []


def test_an_unmanaged_containers_process_on_an_allocated_gpu_is_a_breach():
    (breach,) = breaches(process(G1, 40, OTHER, "container"), process(G2, 41, OTHER))
    assert breach == Breach(G1, 40, "python", WHERE_UNMANAGED, OTHER, B)


def test_a_process_nobody_can_place_on_an_allocated_gpu_is_unknown():
    # before the sampler fills `where`, a process in no container reads "unknown"
    (breach,) = breaches(process(G0, 50, None, WHERE_UNKNOWN, name=""))
    assert breach == Breach(G0, 50, "", WHERE_UNKNOWN, None, A)


def test_a_reading_without_where_or_name_still_checks():
    class Old:  # a reading as the sampler gave it before `where` and `name`
        def __init__(self, gpu, pid, container_id):
            self.gpu_uuid, self.pid, self.container_id = gpu, pid, container_id

    found = find_breaches([Old(G0, 60, None), Old(G0, 61, A), Old(G1, 62, A)], OWNERS, ALLOWED)
    assert [(b.pid, b.where, b.process_name) for b in found] == [
        (60, WHERE_UNKNOWN, ""),
        (62, WHERE_CONTAINER, ""),
    ]


def test_one_pid_listed_twice_on_a_gpu_counts_once_and_the_order_is_gpu_then_pid():
    found = breaches(
        process(G1, 9, A), process(G0, 8, CPU), process(G1, 7, None), process(G1, 9, A)
    )
    assert [b.key for b in found] == [(8, G0), (7, G1), (9, G1)]


def test_no_processes_no_servers():
    assert find_breaches([], {}, {}) == []
    # nothing is metered: every process is outside any server, on a GPU no server holds
    assert find_breaches([process(G0, 1, OTHER), process(G1, 2)], {}, {}) == []
