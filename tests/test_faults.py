"""Faults: the meter killed, the database locked. Nothing lost, nothing counted twice.

Every test compares the ledger with Docker's own start and die times (within 1 s).
"""

import os
import signal
import sqlite3
import threading
import time

import pytest

from jupyter_gpu_meter.ledger import Ledger
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


def flood_engine_events(docker_client, count=300):
    """`count` engine events (volumes made and removed): Docker replays only its last 256."""
    for i in range(count // 2):
        docker_client.volumes.create(f"jgm-test-flood-{os.getpid()}-{i}").remove()


def test_runs_the_engine_forgot_while_the_meter_was_down_bill_dockers_times(
    make_hub, docker_times, docker_client, postgres_url
):
    """A meter that comes back gets only the engine's last 256 events. The hub records
    each container's run before removing it, so a run that ended, or ran whole, while
    the meter was down, and whose events the engine forgot, bills Docker's own times:
    also a server that died on its own (the hub finds it dead at its next poll).

    PostgreSQL: the stopped meter may hold a write it began (it notes each Docker
    event, other hubs' too), which would lock a whole SQLite file but only its own rows
    here."""
    quiet = {f"MeterService.{name}": 3600 for name in ("flush_interval", "reconcile_interval")}
    settings = {"MeterService.db_url": postgres_url, "GPUDockerSpawner.poll_interval": 1}
    hub = make_hub("3", meter=True, **settings, **quiet)
    hub.settings["ledger_url"] = postgres_url
    hub.start_server("ada", {"gpus": 1})
    hub.start_server("carol", {"gpus": 1})
    ada, carol = hub.container_of("ada"), hub.container_of("carol")
    wait_until(lambda: session_of(hub, ada.id) and session_of(hub, carol.id), 30, "sessions")
    meter, since = hub.meter_pid(), time.time()
    os.kill(meter, signal.SIGSTOP)  # down, and the hub does not know it
    try:
        hub.start_server("bob", {"gpus": 1})
        bob = hub.container_of("bob")
        hub.stop_server("bob")  # a whole run the meter never saw
        hub.stop_server("ada")
        docker_client.api.kill(carol.id)  # dies on its own: no stop() from the hub
        removed = docker_client.events(
            since=since,
            until=time.time() + 30,
            filters={"container": carol.id, "event": "destroy"},
            decode=True,
        )
        assert next(removed, None), "the hub did not remove carol's dead container in 30 s"
        flood_engine_events(docker_client)
        replayed = docker_client.events(
            since=since, until=time.time(), filters={"event": "die"}, decode=True
        )
        assert not {e["id"] for e in replayed} & {ada.id, bob.id, carol.id}  # forgotten
    finally:
        os.kill(meter, signal.SIGKILL)

    for user, container in (("ada", ada), ("bob", bob), ("carol", carol)):
        session = closed_session(hub, container.id, timeout=90)
        assert_matches_docker(session, docker_times.times[container.id], "engine forgot")
        assert "from the hub's record of its stop" in session.end_reason
        assert len(user_sessions(hub, user)) == 1
    assert session.end_reason.startswith("exited with code 137")  # carol's


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


def test_hub_sigkilled_with_servers_running(make_hub, docker_times):
    hub = make_hub("2", meter=True)
    hub.start_server("ada", {"gpus": 1})
    ada = hub.container_of("ada")
    wait_until(lambda: session_of(hub, ada.id), 30, "ada's session")
    held = hub.gpus_held()

    old_meter = hub.meter_pid()
    hub.kill()  # the hub dies; the notebook container does not
    # the meter notices its hub is gone and stops, so the next hub's meter can start
    wait_until(lambda: hub.meter_pid() != old_meter, 30, "the orphaned meter to stop")
    hub.start()
    assert hub.server_model("ada")["ready"]
    assert hub.gpus_held() == held
    hub.start_server("bob", {"gpus": 1})
    assert set(hub.gpus_held()["bob/"]).isdisjoint(held["ada/"])
    hub.stop_server("ada")
    session = closed_session(hub, ada.id, timeout=60)
    assert_matches_docker(session, docker_times.times[ada.id], "hub SIGKILLed")
    assert len(user_sessions(hub, "ada")) == 1


@pytest.mark.alone
def test_postgresql_down_for_30_seconds_loses_nothing(make_hub, docker_times, postgres_url):
    import subprocess

    hub = make_hub("1", meter=True, **{"MeterService.db_url": postgres_url})
    hub.settings["ledger_url"] = postgres_url

    def schema_ready():
        try:
            with Ledger(postgres_url) as ledger:
                ledger.check_revision()
            return True
        except Exception:
            return False

    wait_until(schema_ready, 30, "the meter to create its tables")
    cluster = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
    ).stdout.split()[:2]
    subprocess.run(["pg_ctlcluster", *cluster, "stop", "-m", "fast"], check=True)
    try:
        started = time.monotonic()
        hub.start_server("ada", {"gpus": 1})
        container = hub.container_of("ada")
        time.sleep(5)
        hub.stop_server("ada")
        time.sleep(max(0, 30 - (time.monotonic() - started)))
    finally:
        subprocess.run(["pg_ctlcluster", *cluster, "start"], check=True)
    session = closed_session(hub, container.id, timeout=90)
    assert_matches_docker(session, docker_times.times[container.id], "PostgreSQL down 30 s")
    assert len(user_sessions(hub, "ada")) == 1


def test_fifty_concurrent_starts_and_stops_for_a_minute_never_share_or_leak(make_hub):
    from concurrent.futures import ThreadPoolExecutor

    hub = make_hub("8")
    users = [f"user{i}" for i in range(50)]
    hub.create_users(*users)
    deadline = time.monotonic() + 60
    overlaps, started = [], []

    def churn(user):
        while time.monotonic() < deadline:
            response = hub.start_server(user, {"gpus": 1})
            if response.status_code in (201, 202) and (hub.server_model(user) or {}).get("ready"):
                started.append(user)
                time.sleep(1)
                hub.stop_server(user)
            else:
                time.sleep(0.5)

    def watch():
        while time.monotonic() < deadline:
            held = hub.gpus_held()
            uuids = [uuid for gpus in held.values() for uuid in gpus]
            if len(uuids) != len(set(uuids)):
                overlaps.append(held)
            time.sleep(0.5)

    with ThreadPoolExecutor(51) as pool:
        watcher = pool.submit(watch)
        for future in [pool.submit(churn, user) for user in users]:
            future.result()
        watcher.result()
    assert not overlaps, f"a GPU was held twice: {overlaps[0]}"
    assert len(started) >= 8  # the GPUs were really used, again and again
    for user in users:
        if hub.server_model(user) is not None:
            hub.stop_server(user)
    assert hub.gpus_held() == {}  # none leaked
    assert len(hub.containers()) == 0


@pytest.mark.alone
def test_docker_engine_restarted_mid_session(make_hub, docker_times):
    """dockerd restarts (an upgrade, a crash): the notebook dies with it, the meter closes
    its session from what Docker still knows and goes on metering new ones."""
    import subprocess
    from pathlib import Path

    pidfile = Path("/run/jupyter-gpu-meter-dockerd.pid")
    if not pidfile.exists():
        pytest.skip("dockerd was not started by scripts/start-docker: not ours to restart")
    hub = make_hub("1", meter=True)
    hub.start_server("ada", {"gpus": 1})
    container = hub.container_of("ada")
    wait_until(lambda: session_of(hub, container.id), 30, "ada's session")

    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 60, "dockerd to stop")
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([str(repo / "scripts/start-docker")], check=True, capture_output=True)

    session = closed_session(hub, container.id, timeout=90)
    die = docker_times.times.get(container.id, {}).get("die")
    if die is not None:  # the watcher saw the die event before the engine went away
        assert abs((session.ended_at - die).total_seconds()) <= 1
    assert session.end_reason  # says how it ended
    wait_until(lambda: hub.server_model("ada") is None, 90, "the hub to see ada's server gone")
    # the meter follows the new engine: a new session is metered
    hub.start_server("bob", {"gpus": 1})
    bob = hub.container_of("bob")
    wait_until(lambda: session_of(hub, bob.id), 60, "bob's session on the restarted engine")
    assert len(user_sessions(hub, "ada")) == 1
