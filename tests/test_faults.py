"""Faults: the meter killed, the database locked. Nothing lost, nothing counted twice.

Every test compares the ledger with Docker's own start and die times (within 1 s).
"""

import os
import signal
import sqlite3
import threading
import time

import pytest

from tests.metering import (
    assert_matches_docker,
    closed_session,
    session_of,
    user_sessions,
    wait_until,
)

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]


def test_meter_sigkilled_twice_during_sessions(make_hub, docker_times):
    hub = make_hub("2", meter=True)
    hub.start_many([("ada", {"gpus": 1}), ("bob", {"gpus": 1})])
    ada, bob = hub.container_of("ada"), hub.container_of("bob")
    wait_until(lambda: session_of(hub, ada.id) and session_of(hub, bob.id), 30, "two sessions")

    first = hub.meter_pid()
    os.kill(first, signal.SIGKILL)
    hub.stop_server("bob")  # ends while no meter runs
    second = wait_until(lambda: (pid := hub.meter_pid()) != first and pid, 60, "a new meter")
    wait_until(lambda: session_of(hub, bob.id).ended_at, 30, "bob's session to close")
    os.kill(second, signal.SIGKILL)
    time.sleep(2)
    hub.stop_server("ada")

    for user, container in (("ada", ada), ("bob", bob)):
        session = closed_session(hub, container.id, timeout=90)
        assert_matches_docker(session, docker_times.times[container.id], "meter SIGKILLed twice")
        assert len(user_sessions(hub, user)) == 1


def test_ledger_locked_for_30_seconds_loses_nothing(make_hub, docker_times):
    hub = make_hub("1", meter=True)
    path = hub.ledger_url.removeprefix("sqlite:///")
    wait_until(lambda: os.path.exists(path), 30, "the meter to create its ledger")
    locked, release = threading.Event(), threading.Event()

    def hold_the_lock():
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(60)
        connection.execute("ROLLBACK")
        connection.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        hub.start_server("ada", {"gpus": 1})
        container = hub.container_of("ada")
        time.sleep(5)
        hub.stop_server("ada")
        time.sleep(max(0, 30 - (time.monotonic() - started)))
        assert session_of(hub, container.id) is None  # nothing could be written yet
    finally:
        release.set()
        holder.join()
    session = closed_session(hub, container.id, timeout=60)
    assert_matches_docker(session, docker_times.times[container.id], "ledger locked 30 s")
    assert len(user_sessions(hub, "ada")) == 1


def test_a_gpu_lost_mid_session_ends_it_and_is_never_handed_out(make_hub, fake_nvml, fake_nvml_lib):
    from tests.fakenvml import subprocess_env

    for _ in range(2):
        fake_nvml.add_gpu(name="NVIDIA H100 80GB HBM3")
    fake_nvml.write()
    hub = make_hub(
        None,
        env=subprocess_env(fake_nvml_lib, fake_nvml.state_path),
        meter=True,
        **{"Policies.interval": 1.0, "GPUSampler.interval": 0.5},
    )
    hub.start_server("ada", {"gpus": 1})
    (lost,) = hub.gpus_held()["ada/"]
    container = hub.container_of("ada")
    wait_until(lambda: session_of(hub, container.id), 30, "ada's session")

    fake_nvml.set_lost(fake_nvml.uuids.index(lost))
    fake_nvml.write()
    session = closed_session(hub, container.id, timeout=30)
    assert session.end_reason.startswith(f"stopped: GPU unhealthy ({lost}: GPU is lost")
    wait_until(lambda: hub.server_model("ada") is None, 30, "the hub to see ada stopped")

    hub.start_server("bob", {"gpus": 1})
    assert hub.gpus_held()["bob/"] != [lost]
    refused = hub.start_server("cyd", {"gpus": 1})
    assert refused.status_code == 503
    assert refused.json()["message"] == "no free NVIDIA H100 80GB HBM3: 0 of 2 free (1 unhealthy)"

    fake_nvml.set_lost(fake_nvml.uuids.index(lost), False)  # the GPU recovers
    fake_nvml.write()
    assert hub.start_server("cyd", {"gpus": 1}).status_code in (201, 202)
    assert hub.gpus_held()["cyd/"] == [lost]
