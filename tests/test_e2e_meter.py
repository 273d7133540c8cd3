"""The meter service end to end: a real hub runs it; Docker's own times are the reference.

A background watcher records Docker's start and die events for every managed
container, independently of the meter; each test compares the ledger with it.
"""

import json
import math
import os
import signal
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import requests

from jupyter_gpu_meter.clock import parse_docker_time
from jupyter_gpu_meter.ledger import Ledger
from tests.metering import (
    assert_matches_docker,
    closed_session,
    rollup_samples,
    session_of,
    user_sessions,
    wait_until,
)

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

H100 = "NVIDIA H100 80GB HBM3"


PRICES = {"Pricing.prices": {H100: "2.49"}, "Pricing.currency": "EUR"}


def test_one_session_to_the_second_charged_at_its_price(make_hub, docker_times, tmp_path):
    utilization = tmp_path / "utilization.json"
    hub = make_hub(
        f"1x{H100}",
        env={**os.environ, "JUPYTER_GPU_METER_SIMULATED_UTILIZATION": str(utilization)},
        meter=True,
        **PRICES,
    )
    hub.start_server("ada", {"gpus": 1})
    container = hub.container_of("ada")
    (uuid,) = hub.gpus_held()["ada/"]
    reading = {"utilization": 73, "memory_used_bytes": 5 << 30, "power_watts": 400}
    utilization.write_text(json.dumps({uuid: reading}))
    opened = wait_until(lambda: session_of(hub, container.id), 30, "the session to open")
    assert opened.ended_at is None and opened.gpu_uuids == (uuid,)
    # the reading is written once the server is up, after samples of the idle GPU; it runs
    # until the meter has recorded 10 samples (one a second) since it saw the reading
    wait_until(lambda: memory_max(hub, container.id) == 5 << 30, 60, "the meter to read it")
    seen = rollup_samples(hub, container.id)
    wait_until(lambda: rollup_samples(hub, container.id) >= seen + 10, 60, "10 more samples")
    hub.stop_server("ada")

    session = closed_session(hub, container.id)
    assert_matches_docker(session, docker_times.times[container.id], "10 s session")
    # a second, independent reference: the runtime's own start time (docker inspect)
    runtime_start = parse_docker_time(container.attrs["State"]["StartedAt"])
    assert abs((session.started_at - runtime_start).total_seconds()) <= 1
    assert session.end_reason == "stopped"
    assert (session.user, session.server, session.gpu_model) == ("ada", "", H100)
    assert session.price.price_per_gpu_hour == Decimal("2.49")
    assert session.price.currency == "EUR"
    seconds = math.ceil((session.ended_at - session.started_at).total_seconds())
    assert session.charge(datetime.now(timezone.utc)) == Decimal("2.49") * seconds / 3600
    assert len(user_sessions(hub, "ada")) == 1
    with Ledger(hub.ledger_url) as ledger:
        rollups = ledger.rollups(container.id)
        efficiency = ledger.efficiency_of([session.id])[session.id]
    assert 10 <= sum(r.samples for r in rollups) <= seconds + 1  # ~1 sample a second
    # busy time: utilization x the ~1 s each tick stands for, what the rollups hold
    util_seconds = sum(r.util_mean * r.samples for r in rollups) / 100
    assert efficiency.busy_gpu_ms == sum(r.busy_ms for r in rollups)
    assert abs(efficiency.busy_gpu_ms - util_seconds * 1000) <= 0.25 * util_seconds * 1000
    assert efficiency.busy_source == "utilization"
    assert efficiency.memory_max_bytes == 5 << 30
    # energy: the simulated counter's deltas while the session held the GPU, 400 W
    # once the file says so (60 W + 6 W per percent before); never past its end
    samples_taken = sum(r.samples for r in rollups)
    assert efficiency.energy_mj == sum(r.energy_mj or 0 for r in rollups)
    assert 60_000 * (samples_taken - 2) <= efficiency.energy_mj <= 400_000 * (seconds + 1)
    assert {r.gpu_uuid for r in rollups} == {uuid}
    assert max(r.util_max for r in rollups) == 73
    assert max(r.memory_max_bytes for r in rollups) == 5 << 30


def memory_max(hub, container_id) -> int:
    with Ledger(hub.ledger_url) as ledger:
        return max((r.memory_max_bytes for r in ledger.rollups(container_id)), default=0)


def test_without_a_driver_library_runtime_is_still_metered(make_hub):
    static = [{"uuid": "GPU-0f3c2b1a-static", "model": H100}]
    hub = make_hub(None, meter=True, **{"GPUInventory.static": static, **PRICES})
    health = wait_until(
        lambda: (r := requests.get(hub.meter_url + "api/health", timeout=5)).ok and r.json(),
        30,
        "the meter to answer",
    )
    assert health["gpu_sampling"] == "off"
    assert "no NVIDIA driver library: metering runtime only" in health["gpu_sampling_problem"]

    hub.start_server("ada", {"gpus": 1})
    container = hub.container_of("ada")
    wait_until(lambda: session_of(hub, container.id), 30, "the session to open")
    hub.stop_server("ada")
    session = closed_session(hub, container.id)
    assert session.gpu_uuids == ("GPU-0f3c2b1a-static",)
    assert session.ended_at > session.started_at
    with Ledger(hub.ledger_url) as ledger:
        assert ledger.rollups(container.id) == []


def test_meter_killed_mid_session_loses_nothing(make_hub, docker_times):
    hub = make_hub(f"1x{H100}", meter=True, **PRICES)
    hub.start_server("ada", {"gpus": 1})
    container = hub.container_of("ada")
    wait_until(lambda: session_of(hub, container.id), 30, "the session to open")

    os.kill(hub.meter_pid(), signal.SIGKILL)
    # the server stops while no meter is watching: its end must still be exact
    hub.stop_server("ada")
    # the hub notices its managed service died and starts it again (polls every 30 s)
    session = closed_session(hub, container.id, timeout=90)
    assert_matches_docker(session, docker_times.times[container.id], "meter SIGKILLed")
    assert len(user_sessions(hub, "ada")) == 1


def test_hub_restart_continues_the_session(make_hub, docker_times):
    hub = make_hub(f"1x{H100}", meter=True, **PRICES)
    hub.start_server("ada", {"gpus": 1})
    container = hub.container_of("ada")
    before = wait_until(lambda: session_of(hub, container.id), 30, "the session to open")
    old_meter = hub.meter_pid()

    hub.restart()
    assert hub.server_model("ada")["ready"]
    # the new meter's first reconcile found the container running: it counts it, not closed
    wait_until(lambda: hub.meter_pid() not in (None, old_meter), 30, "the new meter")
    wait_until(lambda: (hub.meter_health() or {}).get("running_sessions") == 1, 30, "its reconcile")
    assert session_of(hub, container.id).ended_at is None
    hub.stop_server("ada")

    session = closed_session(hub, container.id)
    assert session.started_at == before.started_at
    assert_matches_docker(session, docker_times.times[container.id], "hub restarted")
    assert len(user_sessions(hub, "ada")) == 1


def test_price_change_mid_session_keeps_the_running_sessions_price(make_hub):
    hub = make_hub(f"2x{H100}", meter=True, **PRICES)
    hub.start_server("ada", {"gpus": 1})
    ada = hub.container_of("ada")
    wait_until(lambda: session_of(hub, ada.id), 30, "ada's session to open")

    hub.restart(**{"Pricing.prices": {H100: "9.99"}})
    hub.start_server("bob", {"gpus": 1})
    bob = hub.container_of("bob")
    wait_until(lambda: session_of(hub, bob.id), 30, "bob's session to open")
    hub.stop_server("ada")
    hub.stop_server("bob")

    assert closed_session(hub, ada.id).price.price_per_gpu_hour == Decimal("2.49")
    assert closed_session(hub, bob.id).price.price_per_gpu_hour == Decimal("9.99")
