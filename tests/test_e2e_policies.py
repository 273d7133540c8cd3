"""Policies end to end: the meter stops idle GPU servers and vouches for busy ones."""

import json
import os
import sys
import time

import pytest

from jupyter_gpu_meter.ledger import Ledger

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

FAST = {"Policies.interval": 1.0, "GPUSampler.interval": 0.5}


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def decisions(hub, user):
    with Ledger(hub.ledger_url) as ledger:
        return ledger.decisions(user=user)


def session(hub, container_id):
    with Ledger(hub.ledger_url) as ledger:
        return ledger.get_session(container_id)


def test_an_idle_gpu_server_is_stopped_and_told_why(make_hub):
    hub = make_hub("1", meter=True, **FAST, **{"Policies.gpu_idle_timeout": 4})
    hub.start_server("ada", {"gpus": 1})
    container = hub.container_of("ada")
    # the simulated GPU reads 0 %: idle from the first tick
    wait_until(lambda: hub.server_model("ada") is None, 40, "the hub to stop ada's server")

    closed = wait_until(
        lambda: (s := session(hub, container.id)) and s.ended_at and s, 20, "the session to close"
    )
    assert closed.end_reason.startswith("stopped: GPUs idle for ")
    (decision,) = decisions(hub, "ada")
    assert (decision.policy, decision.action, decision.outcome) == ("gpu-idle", "stop", "stopped")
    assert decision.reason == closed.end_reason.removeprefix("stopped: ")
    assert not decision.dry_run


def test_dry_run_decides_but_stops_nothing(make_hub):
    hub = make_hub(
        "1", meter=True, **FAST, **{"Policies.gpu_idle_timeout": 2, "Policies.dry_run": True}
    )
    hub.start_server("ada", {"gpus": 1})
    container = hub.container_of("ada")
    found = wait_until(lambda: decisions(hub, "ada"), 30, "a dry-run decision")
    assert found[0].outcome == "would stop (dry run)" and found[0].dry_run
    time.sleep(3)
    assert hub.server_model("ada")["ready"]
    assert session(hub, container.id).ended_at is None


def test_a_busy_gpu_server_survives_the_idle_culler(make_hub, tmp_path):
    utilization = tmp_path / "utilization.json"
    culler = {
        "name": "idle-culler",
        "command": [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            "--timeout=12",
            "--cull-every=3",
        ],
    }
    culler_role = {
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    }
    hub = make_hub(
        "1",
        env={**os.environ, "JUPYTER_GPU_METER_SIMULATED_UTILIZATION": str(utilization)},
        meter=True,
        **FAST,
        **{"JupyterHub.services": [culler], "JupyterHub.load_roles": [culler_role]},
    )
    hub.start_server("ada", {"gpus": 1})  # training: GPU busy, no browser
    (uuid,) = hub.gpus_held()["ada/"]
    utilization.write_text(json.dumps({uuid: 97}))
    hub.start_server("bob", {"gpus": 0})  # nothing going on

    # the culler works: it stops bob's idle server...
    wait_until(lambda: hub.server_model("bob") is None, 60, "the idle culler to stop bob")
    # ...and leaves ada's busy one alone, since the meter reports its activity
    time.sleep(15)
    assert (hub.server_model("ada") or {}).get("ready"), "the busy GPU server was culled"
    activity = hub.api("GET", "/users/ada").json()["servers"][""]["last_activity"]
    assert activity is not None
