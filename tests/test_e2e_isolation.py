"""The isolation check end to end: a real hub, real containers, GPUs from the stand-in NVML.

The hub and its meter read the GPUs through the real NVML bindings from the
stand-in ``libnvidia-ml.so.1`` (tests/fakenvml), so the meter samples with its
NVMLSampler and maps PIDs to containers through this machine's real ``/proc``.
ada and bob each start a 1-GPU server; the stand-in then reports the host PID
of ada's notebook process on bob's GPU, as a driver does when a container sees
a GPU it was not given. Ticks are the meter's: each wait polls ``api/gpus``
(whose ``sampled_at`` says which tick answered) against a deadline.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from jupyter_gpu_meter.isolation import POLICY
from jupyter_gpu_meter.ledger import Ledger
from jupyter_gpu_meter.sampler.attribution import container_of_pid
from tests.fakenvml import subprocess_env
from tests.hub import login
from tests.metering import closed_session, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

INTERVAL = 0.5
FAST = {"GPUSampler.interval": INTERVAL, "Policies.interval": 1.0}


class Meter:
    """The meter behind the hub's proxy, as a script with `user`'s token sees it."""

    def __init__(self, hub, user):
        self.hub = hub
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {hub.user_token(user)}"

    def get(self, path):
        response = self.session.get(self.hub.meter_url + path, timeout=30)
        assert response.status_code == 200, (response.status_code, response.text)
        return response

    def gpus(self) -> dict:
        return self.get("api/gpus").json()


def sampled_at(answer) -> datetime:
    return datetime.fromisoformat(answer["gpus"][0]["sampled_at"])


def ticks_after(meter: Meter, since: datetime, *, until=None, count=10, timeout=30) -> list:
    """``api/gpus`` once per meter tick that began after `since`, in order: until
    `until(answer)` holds (the last one is the first that does), or `count` ticks."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = meter.gpus()
        if sampled_at(answer) > since and (not seen or sampled_at(answer) > sampled_at(seen[-1])):
            seen.append(answer)
            if (until is not None and until(answer)) or len(seen) >= count:
                return seen
        time.sleep(INTERVAL / 5)
    raise AssertionError(f"{len(seen)} tick(s) after {since} within {timeout} s: {seen[-1:]}")


def row(answer, uuid) -> dict:
    (found,) = [gpu for gpu in answer["gpus"] if gpu["uuid"] == uuid]
    return found


def isolation_decisions(hub):
    with Ledger(hub.ledger_url) as ledger:
        return ledger.decisions(policy=POLICY)


def nvml_hub(make_hub, fake_nvml, fake_nvml_lib, **settings):
    """A hub and meter on two GPUs of the stand-in NVML; ada's and bob's 1-GPU servers."""
    fake_nvml.add_gpu()
    fake_nvml.add_gpu()
    fake_nvml.write()
    env = subprocess_env(fake_nvml_lib, fake_nvml.state_path)
    hub = make_hub(None, env=env, meter=True, **FAST, **settings)
    for user in ("ada", "bob"):
        assert hub.start_server(user, {"gpus": 1}).status_code in (201, 202)
        assert hub.server_model(user)["ready"]
    held = hub.gpus_held()
    hub.ada_gpu, hub.bob_gpu = held["ada/"][0], held["bob/"][0]
    container = hub.container_of("ada")
    container.reload()
    hub.ada_container, hub.ada_pid = container.id, container.attrs["State"]["Pid"]
    # this machine's cgroup layout names the container, and the meter's parser reads it
    with open(f"/proc/{hub.ada_pid}/cgroup") as cgroup:
        assert container.id in cgroup.read()
    assert container_of_pid(hub.ada_pid) == container.id
    wait_until(lambda: hub.meter_health() and hub.meter_health()["gpu_sampling"] == "on", 60)
    return hub


def put_process(fake_nvml, gpu_uuid, pid) -> datetime:
    """The stand-in NVML reports `pid` on `gpu_uuid` from now on; when that began."""
    at = datetime.now(timezone.utc)
    fake_nvml.add_process(fake_nvml.uuids.index(gpu_uuid), pid, 1 << 30)
    fake_nvml.write()
    return at


def test_adas_process_on_bobs_gpu_is_flagged_within_two_ticks_and_on_her_own_never(
    make_hub, fake_nvml, fake_nvml_lib
):
    hub = nvml_hub(make_hub, fake_nvml, fake_nvml_lib)
    ada_gpu, bob_gpu, pid = hub.ada_gpu, hub.bob_gpu, hub.ada_pid
    admin = Meter(hub, "admin")

    # ada's process on ada's GPU: no breach, tick after tick
    since = put_process(fake_nvml, ada_gpu, pid)
    for answer in ticks_after(admin, since, count=6):
        assert all(gpu["breaches"] == [] for gpu in answer["gpus"]), answer

    # and on bob's GPU too: flagged within two ticks, naming ada, bob and the GPU
    since = put_process(fake_nvml, bob_gpu, pid)
    seen = ticks_after(admin, since, until=lambda answer: row(answer, bob_gpu)["breaches"])
    print(f"flagged at tick {len(seen)} after the stand-in NVML reported the process")
    assert len(seen) <= 2
    answer = seen[-1]
    (breach,) = row(answer, bob_gpu)["breaches"]
    assert breach["pid"] == pid and breach["where"] == "container"
    assert (breach["user"], breach["server"]) == ("ada", "")
    assert breach["container_id"] == hub.ada_container
    assert row(answer, bob_gpu)["holder"]["user"] == "bob"
    assert row(answer, ada_gpu)["breaches"] == []  # her own GPU, still

    # bob sees that a foreign process uses his GPU, and nothing about whose
    mine = Meter(hub, "bob").gpus()
    (foreign,) = row(mine, bob_gpu)["breaches"]
    assert foreign["pid"] is None and foreign["user"] is None and foreign["since"]
    assert "ada" not in json.dumps(mine) and hub.ada_container not in json.dumps(mine)
    theirs = Meter(hub, "ada").gpus()
    assert row(theirs, bob_gpu)["breaches"] == [] and row(theirs, ada_gpu)["breaches"] == []

    # the decision, the admin page, /metrics
    (decision,) = wait_until(lambda: isolation_decisions(hub), 10, "the isolation decision")
    assert (decision.user, decision.server, decision.action) == ("ada", "", "report")
    assert decision.outcome == "reported"
    assert f"PID {pid} (" in decision.reason and "in ada's server" in decision.reason
    assert f"uses GPU {bob_gpu}, held by bob's server" in decision.reason
    page = login(hub, "admin").get(hub.meter_url + "admin", timeout=30)
    assert page.status_code == 200
    box = page.text[page.text.index('id="isolation"') :]
    assert f'data-pid="{pid}"' in box and bob_gpu in box
    assert "server ada" in box and ">bob<" in box
    metrics = admin.get("metrics").text
    assert "jupyter_gpu_meter_isolation_breaches_total 1.0" in metrics
    assert "jupyter_gpu_meter_isolation_breaches 1.0" in metrics

    # it lasts: still one breach, logged and recorded once; nobody stopped
    for later in ticks_after(admin, sampled_at(answer), count=4):
        assert len(row(later, bob_gpu)["breaches"]) == 1 and row(later, ada_gpu)["breaches"] == []
    assert len(isolation_decisions(hub)) == 1
    assert hub.logs().count("Isolation breach: ") == 1
    assert hub.server_model("ada")["ready"] and hub.server_model("bob")["ready"]

    # ada's process counts in her session's process groups, on whichever GPU it ran
    name = Path(f"/proc/{pid}/comm").read_text().strip()

    def groups():
        with Ledger(hub.ledger_url) as ledger:
            return ledger.process_groups(ledger.get_session(hub.ada_container).id)

    (group,) = wait_until(lambda: [g for g in groups() if g.samples >= 10], 30, "ada's processes")
    # its peak: 1 GiB on each of the two GPUs the stand-in reports it on, at one tick
    assert (group.process_group, group.memory_max_bytes) == (name, 2 << 30)
    assert group.present_ms >= 10 * INTERVAL * 1000 / 2  # each tick stands for ~1 interval
    with Ledger(hub.ledger_url) as ledger:
        bob = ledger.get_session(hub.container_of("bob").id).id
        assert ledger.process_groups(bob) == []  # a foreign process is not bob's


def test_with_the_stop_on_adas_server_is_stopped_and_bobs_runs_on(
    make_hub, fake_nvml, fake_nvml_lib
):
    hub = nvml_hub(
        make_hub, fake_nvml, fake_nvml_lib, **{"Policies.stop_on_isolation_breach": True}
    )
    bob_container = hub.container_of("bob").id
    put_process(fake_nvml, hub.bob_gpu, hub.ada_pid)
    wait_until(lambda: hub.server_model("ada") is None, 60, "the hub to stop ada's server")
    # the driver drops a dead process's context
    fake_nvml.clear_processes()
    fake_nvml.write()

    closed = closed_session(hub, hub.ada_container, timeout=30)
    assert closed.end_reason.startswith("stopped: isolation breach: PID ")
    assert f"uses GPU {hub.bob_gpu}, held by bob's server" in closed.end_reason
    (decision,) = isolation_decisions(hub)
    assert (decision.user, decision.action, decision.outcome) == ("ada", "stop", "stopped")
    assert decision.reason == closed.end_reason.removeprefix("stopped: ")
    model = hub.server_model("bob")
    assert model["ready"] and not model["pending"]
    assert hub.container_of("bob").id == bob_container
