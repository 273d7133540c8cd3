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
