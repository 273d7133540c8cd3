"""Policies end to end: the meter stops idle GPU servers and vouches for busy ones."""

import json
import os
import sys
import time

import pytest
import requests

from jupyter_gpu_meter.ledger import Ledger
from tests.hub import login
from tests.metering import closed_session, give_money_budget, session_of, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

FAST = {"Policies.interval": 1.0, "GPUSampler.interval": 0.5}


def decisions(hub, user):
    with Ledger(hub.ledger_url) as ledger:
        return ledger.decisions(user=user)


def test_an_idle_gpu_server_is_stopped_and_told_why(make_hub):
    hub = make_hub("1", meter=True, **FAST, **{"Policies.gpu_idle_timeout": 4})
    hub.start_server("ada", {"gpus": 1})
    container = hub.container_of("ada")
    # the simulated GPU reads 0 %: idle from the first tick
    wait_until(lambda: hub.server_model("ada") is None, 40, "the hub to stop ada's server")

    closed = closed_session(hub, container.id, timeout=20)
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
    assert session_of(hub, container.id).ended_at is None


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


def test_a_budget_used_up_mid_session_stops_the_server_and_refuses_the_next(make_hub):
    model = "NVIDIA H100 80GB HBM3"
    hub = make_hub(
        f"1x{model}",
        meter=True,
        **FAST,
        **{
            "Pricing.prices": {model: "3600"},  # 1 USD a second, so a test can spend it
            "Budgets.grace": 2,
            "Budgets.minimum_start": 5,
        },
    )
    give_money_budget(hub, "ada", "15")
    hub.start_server("ada", {"gpus": 1})
    container = hub.container_of("ada")
    # about 15 s later the budget is used up; 2 s after that the server stops
    wait_until(lambda: hub.server_model("ada") is None, 60, "the budget policy to stop ada")
    closed = closed_session(hub, container.id, timeout=20)
    assert closed.end_reason.startswith("stopped: budget used up (")
    kinds = [(d.policy, d.action, d.outcome) for d in reversed(decisions(hub, "ada"))]
    assert kinds == [
        ("budget", "warn", "warned"),  # 80 %
        ("budget", "warn", "warned"),  # used up, grace period
        ("budget", "stop", "stopped"),
    ]

    refused = hub.start_server("ada", {"gpus": 1})
    assert refused.status_code == 403
    assert refused.json()["message"] == (
        "your budget (user ada) has 0.00 USD left this period: not enough to start "
        "1 × NVIDIA H100 80GB HBM3, whose first 5 s costs 5.00 USD"
    )
    # the user sees it: on the usage API (and page) and on the spawn page
    token = hub.user_token("ada")
    usage = requests.get(
        hub.meter_url + "api/usage", headers={"Authorization": f"token {token}"}, timeout=30
    ).json()
    assert usage["budget"]["left"] == {"amount": "0.00", "currency": "USD"}
    assert usage["budget"]["of"] == {"amount": "15.00", "currency": "USD"}
    assert "used up" in usage["budget"]["warning"]
    form = login(hub, "ada").get(hub.url + "/hub/spawn", timeout=30).text
    assert "Budget left: 0.00 of 15.00 USD" in form
    # a CPU-only server costs nothing here, so the budget does not stand in its way
    assert hub.start_server("ada", {"gpus": 0}).status_code in (201, 202)


def test_gpu_aware_cull_arbiter_for_admins_who_run_the_idle_culler(make_hub, tmp_path):
    from jupyter_gpu_meter.hubconfig import idle_culler_role

    utilization = tmp_path / "utilization.json"
    config = tmp_path / "idle_culler_config.py"
    config.write_text(
        "from jupyter_gpu_meter.idle_culler import GPUCullArbiter\n"
        "c = get_config()\n"
        "c.IdleCuller.cull_arbiter_hook = GPUCullArbiter(gpu_inactive_limit=15)\n"
    )
    hub = make_hub(
        "2",
        env={**os.environ, "JUPYTER_GPU_METER_SIMULATED_UTILIZATION": str(utilization)},
        meter=True,
        **FAST,
        **{"Policies.keep_alive": False},  # the arbiter alone, no activity reports
    )
    culler = {
        "name": "idle-culler",
        "command": [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            "--timeout=600",  # CPU-only servers: 10 min
            "--cull-every=3",
            f"--config={config}",
        ],
        # no meter URL: the arbiter asks the hub where the meter listens
    }
    hub.restart(**{"JupyterHub.services": [culler], "JupyterHub.load_roles": [idle_culler_role()]})
    hub.start_server("ada", {"gpus": 1})  # training, no browser: its GPU is busy at once
    utilization.write_text(json.dumps({hub.gpus_held()["ada/"][0]: 97}))
    hub.start_server("cyd", {"gpus": 1})  # a GPU nobody uses
    hub.start_server("bob", {"gpus": 0})  # CPU only

    # cyd's idle GPU server goes after 15 s without activity...
    wait_until(lambda: hub.server_model("cyd") is None, 60, "the culler to stop cyd's GPU server")
    time.sleep(10)
    # ...ada's busy one stays though just as inactive, and bob's CPU server has 10 min
    assert (hub.server_model("ada") or {}).get("ready"), "the busy GPU server was culled"
    assert (hub.server_model("bob") or {}).get("ready")
