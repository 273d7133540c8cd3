"""The rollup aggregator (pure): busy time, energy and process groups from ticks."""

import time
from datetime import datetime, timedelta, timezone

import pytest

from jupyter_gpu_meter.ledger import ProcessUsageRow
from jupyter_gpu_meter.sampler import RollupAggregator
from jupyter_gpu_meter.sampler.readings import GPUReading, ProcessReading, Tick
from jupyter_gpu_meter.sampler.rollups import group_name

T0 = datetime(2026, 11, 27, 16, 0, 0, tzinfo=timezone.utc)
A, B, C = "a" * 64, "b" * 64, "c" * 64


def at(seconds):
    return T0 + timedelta(seconds=seconds)


def gpu(uuid="GPU-a", util=50, *, energy=None, sm=None, memory=1000):
    return GPUReading(uuid, 0, "model", util, memory, 10_000, energy_mj=energy, sm_activity=sm)


def process(container=A, name="python", *, gpu_uuid="GPU-a", pid=1, sm=None, memory=None):
    return ProcessReading(gpu_uuid, pid, container, memory, sm, "container", name)


def tick(seconds, *gpus, processes=()):
    return Tick(at(seconds), tuple(gpus), tuple(processes), 0.001)


def by_gpu(aggregator, field):
    return {
        (row.container_id, row.gpu_uuid, row.minute): getattr(row, field)
        for row in aggregator.rows()
    }


# --- busy time ------------------------------------------------------------------------


def test_busy_time_weighs_each_tick_by_the_time_it_stands_for():
    aggregator = RollupAggregator("w", interval_s=2.0)
    owners = {"GPU-a": A}
    aggregator.add(tick(0, gpu(util=100)), owners)  # the first: one interval, 2 s
    aggregator.add(tick(1, gpu(util=50)), owners)  # 1 s since the previous
    aggregator.add(tick(30, gpu(util=10)), owners)  # a gap: at most 2 intervals, 4 s
    aggregator.add(tick(29, gpu(util=100)), owners)  # time went back: stands for nothing
    [row] = aggregator.rows()
    assert (row.busy_ms, row.busy_source, row.samples) == (2000 + 500 + 400, "utilization", 4)


def test_sm_activity_is_busy_where_gpm_gives_it():
    aggregator = RollupAggregator("w")
    owners = {"GPU-a": A, "GPU-b": A}
    aggregator.add(tick(0, gpu(util=100, sm=12.5), gpu("GPU-b", util=40)), owners)
    assert by_gpu(aggregator, "busy_ms") == {(A, "GPU-a", T0): 125, (A, "GPU-b", T0): 400}
    assert by_gpu(aggregator, "busy_source") == {
        (A, "GPU-a", T0): "sm-activity",
        (A, "GPU-b", T0): "utilization",
    }
    # utilization unknown, SM activity known: busy time, no sample
    aggregator.add(tick(61, gpu(util=None, sm=50.0)), owners)
    [row] = [row for row in aggregator.rows() if row.minute > T0]
    assert (row.samples, row.util_mean, row.busy_ms) == (0, 0.0, 1000)


def test_the_interval_must_be_positive():
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="interval_s must be a number of seconds > 0"):
            RollupAggregator("w", interval_s=bad)


# --- energy -------------------------------------------------------------------------


def energy_of(aggregator):
    return by_gpu(aggregator, "energy_mj")


def test_energy_is_the_counters_delta_while_one_container_holds_the_gpu():
    aggregator = RollupAggregator("w")
    aggregator.add(tick(0, gpu(energy=1_000)), {"GPU-a": A})  # the first reading: a baseline
    aggregator.add(tick(1, gpu(energy=1_300)), {"GPU-a": A})
    aggregator.add(tick(61, gpu(energy=1_500)), {"GPU-a": A})  # the next minute
    assert energy_of(aggregator) == {(A, "GPU-a", T0): 300, (A, "GPU-a", at(60)): 200}


def test_energy_is_never_billed_from_before_a_session_or_after_another_began():
    aggregator = RollupAggregator("w")
    aggregator.add(tick(0, gpu(energy=1_000)), {})  # nobody holds it: nobody's energy
    aggregator.add(tick(1, gpu(energy=1_100)), {"GPU-a": A})  # A's baseline
    aggregator.add(tick(2, gpu(energy=1_150)), {"GPU-a": A})  # A: 50
    aggregator.add(tick(3, gpu(energy=1_400)), {"GPU-a": B})  # B's baseline: 250 is no one's
    aggregator.add(tick(4, gpu(energy=1_410)), {"GPU-a": B})  # B: 10
    aggregator.add(tick(5, gpu(energy=1_420)), {})
    assert energy_of(aggregator) == {(A, "GPU-a", T0): 50, (B, "GPU-a", T0): 10}


def test_a_reading_without_a_counter_is_skipped_and_the_next_covers_the_gap():
    aggregator = RollupAggregator("w")
    owners = {"GPU-a": A}
    aggregator.add(tick(0, gpu(energy=1_000)), owners)
    aggregator.add(tick(1, gpu(energy=None)), owners)
    aggregator.add(tick(61, gpu(energy=None)), owners)  # a minute of no counter: NULL
    aggregator.add(tick(121, gpu(energy=1_900)), owners)  # covers the gap, exactly
    assert energy_of(aggregator) == {
        (A, "GPU-a", T0): 0,
        (A, "GPU-a", at(60)): None,
        (A, "GPU-a", at(120)): 900,
    }
    # a holder changing during the gap starts afresh: the gap is nobody's
    aggregator.add(tick(122, gpu(energy=None)), {"GPU-a": B})
    aggregator.add(tick(123, gpu(energy=2_000)), {"GPU-a": B})
    aggregator.add(tick(124, gpu(energy=2_005)), {"GPU-a": B})
    assert energy_of(aggregator)[(B, "GPU-a", at(120))] == 5


def test_a_counter_that_went_down_counts_its_new_value_never_a_negative():
    aggregator = RollupAggregator("w")
    owners = {"GPU-a": A}
    for seconds, energy in ((0, 50_000), (1, 50_100), (2, 40), (3, 90)):
        aggregator.add(tick(seconds, gpu(energy=energy)), owners)
    assert energy_of(aggregator) == {(A, "GPU-a", T0): 100 + 40 + 50}


def test_a_gpu_with_a_counter_but_no_utilization_still_gets_its_energy():
    aggregator = RollupAggregator("w")
    aggregator.add(tick(0, gpu(util=None, energy=10)), {"GPU-a": A})
    aggregator.add(tick(1, gpu(util=None, energy=25)), {"GPU-a": A})
    [row] = aggregator.rows()
    assert (row.samples, row.util_mean, row.busy_ms, row.energy_mj) == (0, 0.0, 0, 15)
    aggregator.add(tick(2, gpu(util=None)), {"GPU-a": A})  # nothing known: nothing added
    assert aggregator.rows() == [row]


# --- process groups -----------------------------------------------------------------


def test_process_groups_of_managed_containers_only():
    aggregator = RollupAggregator("w")
    owners = {"GPU-a": A, "GPU-b": A}
    processes = [
        process(A, "python", pid=1, sm=50, memory=100),
        process(A, "python", pid=1, gpu_uuid="GPU-b", sm=10, memory=50),  # its second GPU
        process(A, "python", pid=2, sm=None, memory=None),
        process(A, "", pid=3, memory=7),  # name unknown
        process(B, "python", pid=4, sm=100),  # B is not metered
        process(None, "Xorg", pid=5),  # a host process
    ]
    aggregator.add(tick(0, gpu(), gpu("GPU-b"), processes=processes), owners, {A})
    aggregator.add(tick(1, gpu(), gpu("GPU-b"), processes=processes[:1]), owners, {A})
    assert aggregator.process_rows() == [
        # python: 3 (process, GPU) pairs x 1 s, then 1 x 1 s; peak 150 at the first tick
        ProcessUsageRow(A, "python", "w", 2, 4000, 600 + 500, 150, at(0), at(1)),
        ProcessUsageRow(A, "unknown", "w", 1, 1000, 0, 7, at(0), at(0)),
    ]
    # without managed containers, no processes are counted
    aggregator.add(tick(2, gpu(), processes=processes), owners)
    assert aggregator.process_rows()[0].samples == 2


def test_a_process_counts_for_its_own_session_on_any_gpu():
    aggregator = RollupAggregator("w")
    # B's process on A's GPU: B's session (the isolation check says it is a breach)
    aggregator.add(tick(0, gpu(), processes=[process(B, sm=100)]), {"GPU-a": A}, {A, B})
    [row] = aggregator.process_rows()
    assert (row.container_id, row.busy_ms) == (B, 1000)


def test_at_most_max_groups_per_session_the_rest_is_other():
    aggregator = RollupAggregator("w")
    aggregator.max_groups = 4
    names = ["a", "b", "c", "d", "e", "a"]
    processes = [process(A, name, pid=i) for i, name in enumerate(names)]
    processes.append(process(C, "d", pid=99))  # another session has room of its own
    aggregator.add(tick(0, processes=processes), {}, {A, C})
    aggregator.add(tick(1, processes=[process(A, "e"), process(A, "a")]), {}, {A, C})
    rows = {(row.container_id, row.process_group): row for row in aggregator.process_rows()}
    assert sorted(rows) == [(A, "a"), (A, "b"), (A, "c"), (A, "other"), (C, "d")]
    assert (rows[A, "a"].samples, rows[A, "a"].present_ms) == (2, 3000)
    # d and e in one group: one sample per tick
    assert (rows[A, "other"].samples, rows[A, "other"].present_ms) == (2, 3000)


def test_group_names_fit_the_ledger():
    assert group_name("") == "unknown"
    assert group_name("torch\x00run") == "torchrun"
    assert group_name("x" * 100) == "x" * 64
    assert group_name("caf\udce9") == "caf?"  # a byte /proc gave that is not UTF-8


def test_forgetting_a_session_drops_its_groups_only():
    aggregator = RollupAggregator("w")
    processes = [process(A, "python"), process(B, "python", pid=2)]
    aggregator.add(tick(0, processes=processes), {}, {A, B})
    aggregator.forget_sessions([A, "unknown-container"])
    assert [row.container_id for row in aggregator.process_rows()] == [B]
    aggregator.forget_sessions([B])
    assert aggregator.process_rows() == []


def test_a_tick_of_8_gpus_and_256_processes_costs_well_under_a_millisecond():
    aggregator = RollupAggregator("w")
    containers = [f"{i:064x}" for i in range(8)]
    owners = {f"GPU-{i}": containers[i] for i in range(8)}
    processes = [
        process(containers[i % 8], f"proc{i % 5}", gpu_uuid=f"GPU-{i % 8}", pid=i, sm=30, memory=1)
        for i in range(256)
    ]
    managed = frozenset(containers)
    rounds, best = 200, float("inf")
    for round_ in range(rounds):
        gpus = [gpu(f"GPU-{i}", energy=round_ * 100, sm=None) for i in range(8)]
        one = tick(round_, *gpus, processes=processes)
        started = time.perf_counter()
        aggregator.add(one, owners, managed)
        best = min(best, time.perf_counter() - started)
    assert best < 1e-3  # the figure itself is in docs/benchmarks.md
