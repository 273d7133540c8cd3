"""The meter's rollups and process groups on their way to the ledger: the real
MeterService pieces and ledger (see test_meter_state.py), the sampler's ticks
scripted (a sampler object with the sampler's one method, injected)."""

from __future__ import annotations

from datetime import timedelta

from jupyter_gpu_meter.sampler.readings import GPUReading, ProcessReading, Tick
from tests import test_meter_state
from tests.test_meter_state import T0, MovableClock

db_url = test_meter_state.db_url
make_meter = test_meter_state.make_meter

A, B = "a" * 64, "b" * 64
OUTSIDER = "f" * 64  # a Docker container the meter does not meter


class ScriptedSampler:
    """What MeterService._tick calls (sample()), giving the ticks a test wrote."""

    def __init__(self, clock):
        self.clock = clock
        self.gpus: dict[str, GPUReading] = {}
        self.processes: list[ProcessReading] = []

    def sample(self) -> Tick:
        return Tick(self.clock(), tuple(self.gpus.values()), tuple(self.processes), 0.001)

    def set(self, uuid, utilization, energy):
        self.gpus[uuid] = GPUReading(uuid, 0, "m", utilization, 1 << 30, 2 << 30, energy_mj=energy)


def process(container, name, gpu, pid, sm):
    where = "host" if container is None else "container"
    return ProcessReading(gpu, pid, container, 100 << 20, sm, where, name)


async def test_the_meter_writes_busy_time_energy_and_process_groups(make_meter, capsys):
    clock = MovableClock(T0 + timedelta(minutes=1))
    meter = make_meter(clock=clock, config={"GPUSampler": {"interval": 2.0}})
    assert meter.aggregator.interval_s == 2.0  # the sampler's interval
    await meter._in_ledger_thread(meter.ledger.ensure_schema)
    docker = meter.docker_api
    await meter._handle_event(docker.run(A, user="ada", gpus=("GPU-0",), at=T0))
    await meter._handle_event(docker.run(B, user="bob", gpus=("GPU-1",), at=T0))
    sampler = meter.sampler = ScriptedSampler(clock)
    sampler.processes = [
        process(A, "python", "GPU-0", 10, sm=50),
        process(B, "", "GPU-1", 11, sm=None),
        process(OUTSIDER, "python", "GPU-1", 12, sm=90),  # not metered: no one's group
        process(None, "Xorg", "GPU-1", 13, sm=1),  # the host's
    ]
    for step, (energy_0, energy_1) in enumerate(((1_000, 500), (1_600, 700))):
        sampler.set("GPU-0", 50, energy_0)
        sampler.set("GPU-1", 0, energy_1)
        clock.now = T0 + timedelta(minutes=1, seconds=2 * step)
        await meter._tick()
    await meter._flush()

    ledger = meter.ledger
    a, b = ledger.get_session(A).id, ledger.get_session(B).id
    found = ledger.efficiency_of([a, b])
    # two ticks of 2 s each at 50 %; energy: the delta between the two readings
    assert (found[a].busy_gpu_ms, found[a].energy_mj, found[a].busy_source) == (
        2000,
        600,
        "utilization",
    )
    assert (found[b].busy_gpu_ms, found[b].energy_mj) == (0, 200)
    [python] = ledger.process_groups(a)
    assert (python.process_group, python.samples, python.present_ms, python.busy_ms) == (
        "python",
        2,
        4000,
        2000,
    )
    assert [g.process_group for g in ledger.process_groups(b)] == ["unknown"]

    # bob's server ends: his groups are written once more, then forgotten by the meter
    await meter._handle_event(docker.die(B, T0 + timedelta(minutes=1, seconds=3)))
    clock.now = T0 + timedelta(minutes=1, seconds=4)
    await meter._tick()
    await meter._flush()
    assert [row.container_id for row in meter.aggregator.process_rows()] == [A]
    assert ledger.process_groups(b)[0].samples == 2  # kept in the ledger
    assert ledger.process_groups(a)[0].samples == 3
    assert "not recorded" not in capsys.readouterr().err


async def test_process_rows_of_a_container_without_a_session_are_logged(make_meter, capsys):
    clock = MovableClock(T0 + timedelta(minutes=1))
    meter = make_meter(clock=clock)
    await meter._in_ledger_thread(meter.ledger.ensure_schema)
    # the meter thinks A runs, but the ledger has no session for it (its open failed)
    await meter._handle_event(meter.docker_api.run(A, user="ada", gpus=("GPU-0",), at=T0))
    with meter.ledger.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM sessions")
    sampler = meter.sampler = ScriptedSampler(clock)
    sampler.set("GPU-0", 10, None)
    sampler.processes = [process(A, "python", "GPU-0", 10, sm=5)]
    await meter._tick()
    capsys.readouterr()
    await meter._flush()
    logged = capsys.readouterr().err  # the application's own log
    assert "1 utilization row(s) for container(s) without a session" in logged
    assert "1 process group row(s) for container(s) without a session were not recorded" in logged
