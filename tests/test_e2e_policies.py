"""Policies end to end: the meter stops idle GPU servers and vouches for busy ones.

Deadlines are the meter's: these tests move its clock (``MeterService.clock``,
``make_hub(meter_clock=True)``) to just before a deadline, wait for a policy
check to run there and see nothing stopped, then move it past the deadline and
wait for the stop. No test sleeps to show that something did not happen.
"""

import json
import os
import sys
from datetime import datetime, timedelta, timezone

import pytest
import requests

from jupyter_gpu_meter.ledger import Ledger
from jupyter_gpu_meter.pricing import Pricing
from tests.hub import login
from tests.metering import (
    add_closed_session,
    closed_session,
    give_money_budget,
    session_of,
    wait_until,
)

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

FAST = {"Policies.interval": 1.0, "GPUSampler.interval": 0.5}
#: seconds of real time a test may take between moving the meter's clock and checking
SLACK = 30


def decisions(hub, user):
    with Ledger(hub.ledger_url) as ledger:
        return ledger.decisions(user=user)


def idle_gpu_server(hub, user):
    """Start `user`'s 1-GPU server; its open session (its GPU reads 0 %: idle at once)."""
    hub.start_server(user, {"gpus": 1})
    container = hub.container_of(user)
    return container, wait_until(lambda: session_of(hub, container.id), 30, "the session")


def test_an_idle_gpu_server_is_stopped_after_its_timeout_and_told_why(make_hub):
    timeout = 600
    hub = make_hub(
        "1", meter=True, meter_clock=True, **FAST, **{"Policies.gpu_idle_timeout": timeout}
    )
    container, session = idle_gpu_server(hub, "ada")
    # idle since the meter's first sample of it, which is not before Docker started it
    hub.move_meter_clock(session.started_at + timedelta(seconds=timeout - SLACK))
    hub.wait_for_policy_check()
    assert hub.server_model("ada")["ready"] and decisions(hub, "ada") == []
    # past the deadline even had the meter first sampled it only after that move
    hub.move_meter_clock(hub.meter_now() + timedelta(seconds=timeout + SLACK))
    wait_until(lambda: hub.server_model("ada") is None, 40, "the hub to stop ada's server")

    closed = closed_session(hub, container.id, timeout=20)
    assert closed.end_reason.startswith("stopped: GPUs idle for ")
    (decision,) = decisions(hub, "ada")
    assert (decision.policy, decision.action, decision.outcome) == ("gpu-idle", "stop", "stopped")
    assert decision.reason == closed.end_reason.removeprefix("stopped: ")
    assert not decision.dry_run


def test_dry_run_decides_but_stops_nothing(make_hub):
    settings = {"Policies.gpu_idle_timeout": 600, "Policies.dry_run": True}
    hub = make_hub("1", meter=True, meter_clock=True, **FAST, **settings)
    container, session = idle_gpu_server(hub, "ada")
    hub.move_meter_clock(session.started_at + timedelta(seconds=2 * 600 + SLACK))
    # two checks decided to stop it; a real stop is awaited before its decision is recorded
    found = wait_until(lambda: len(d := decisions(hub, "ada")) >= 2 and d, 30, "two decisions")
    assert {(d.outcome, d.dry_run) for d in found} == {("would stop (dry run)", True)}
    model = hub.server_model("ada")
    assert model["ready"] and not model["pending"]
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
    started_activity = last_activity(hub, "ada")
    hub.start_server("bob", {"gpus": 0})  # nothing going on

    # the culler works: it stops bob's idle server...
    wait_until(lambda: hub.server_model("bob") is None, 60, "the idle culler to stop bob")
    # ...and leaves ada's busy one alone, since the meter reports its activity. That pass
    # judged ada first (the culler takes users in the hub's order, ada's first, and awaits
    # each), and without the meter ada would look idle longer than bob (started earlier).
    assert (hub.server_model("ada") or {}).get("ready"), "the busy GPU server was culled"
    # what the hub shows: ada's last activity moved on, and is recent by the culler's measure
    activity = last_activity(hub, "ada")
    assert activity > started_activity
    assert datetime.now(timezone.utc) - activity < timedelta(seconds=12)


def last_activity(hub, user) -> datetime:
    """The hub's ``last_activity`` of `user`'s default server."""
    text = hub.api("GET", f"/users/{user}").json()["servers"][""]["last_activity"]
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_budget_used_up_mid_session_warns_then_stops_the_server_after_the_grace(make_hub):
    model, grace = "NVIDIA H100 80GB HBM3", 300
    hub = make_hub(
        f"1x{model}",
        meter=True,
        meter_clock=True,
        **FAST,
        **{
            "Pricing.prices": {model: "3.60"},  # 0.001 USD a second: real time costs ~nothing
            "Budgets.grace": grace,
            "Policies.gpu_idle_timeout": 0,  # the budget's policy alone
        },
    )
    # the last 30 days, not the month: moving the clock never crosses into a new period
    give_money_budget(hub, "ada", "15", period="rolling:30")  # 15 000 s of this GPU
    container, session = idle_gpu_server(hub, "ada")
    kinds = lambda: [(d.policy, d.action, d.outcome, d.reason) for d in decisions(hub, "ada")]  # noqa: E731

    hub.move_meter_clock(session.started_at + timedelta(seconds=12_600))  # 12.60 USD: 84 %
    (near,) = wait_until(kinds, 30, "the 80 % warning")
    assert near[:3] == ("budget", "warn", "warned")
    assert hub.server_model("ada")["ready"]
    hub.move_meter_clock(session.started_at + timedelta(seconds=15_060))  # 15.06 USD
    used_up = wait_until(lambda: len(d := decisions(hub, "ada")) == 2 and d[0], 30, "used up")
    assert (used_up.action, used_up.outcome) == ("warn", "warned")
    assert "used up" in used_up.reason
    # the grace runs from that check: not stopped before it ends...
    hub.move_meter_clock(used_up.at + timedelta(seconds=grace - SLACK))
    hub.wait_for_policy_check()
    assert hub.server_model("ada")["ready"] and len(decisions(hub, "ada")) == 2
    # ...stopped after
    hub.move_meter_clock(used_up.at + timedelta(seconds=grace + 1))
    wait_until(lambda: hub.server_model("ada") is None, 60, "the budget policy to stop ada")
    closed = closed_session(hub, container.id, timeout=20)
    assert closed.end_reason.startswith("stopped: budget used up (")
    assert [k[:3] for k in reversed(kinds())] == [
        ("budget", "warn", "warned"),  # 80 %
        ("budget", "warn", "warned"),  # used up, grace period
        ("budget", "stop", "stopped"),
    ]


def test_a_used_up_budget_refuses_the_next_gpu_start_and_says_where(make_hub):
    model = "NVIDIA H100 80GB HBM3"
    hub = make_hub(
        f"1x{model}",
        meter=True,
        **{"Pricing.prices": {model: "3600"}, "Budgets.minimum_start": 5},
    )
    give_money_budget(hub, "ada", "15")
    # this month ada ran 20 s at 1 USD a second (Docker's times are the bill's: a session
    # cannot be made longer by moving the meter's clock, so it is written as the meter would)
    add_closed_session(
        hub.ledger_url,
        "ada",
        datetime.now(timezone.utc) - timedelta(minutes=1),
        20 / 3600,
        pricing=Pricing(prices={model: "3600"}),
        gpu_model=model,
    )

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
    assert usage["budget"]["left"] == {"amount": "0.000000", "currency": "USD", "text": "0.00 USD"}
    assert usage["budget"]["of"] == {"amount": "15.000000", "currency": "USD", "text": "15.00 USD"}
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
    hub.start_server("bob", {"gpus": 0})  # CPU only
    hub.start_server("cyd", {"gpus": 1})  # a GPU nobody uses

    # cyd's idle GPU server goes after 15 s without activity...
    wait_until(lambda: hub.server_model("cyd") is None, 60, "the culler to stop cyd's GPU server")
    # ...ada's busy one stays though longer inactive, and bob's CPU server has 10 min: the
    # pass that culled cyd judged them first (the culler takes users in the hub's order,
    # awaiting each) and found both inactive longer than cyd
    assert (hub.server_model("ada") or {}).get("ready"), "the busy GPU server was culled"
    assert (hub.server_model("bob") or {}).get("ready")
