"""The isolation check in the running meter: each tick, new breaches logged once, recorded,
counted, shown, and with ``c.Policies.stop_on_isolation_breach`` the offending server stopped.

The real MeterService pieces on a real SQLite ledger; GPUs from the stand-in NVML
(tests/fakenvml) read by the real NVMLSampler, with real PIDs: this test process
and its children on the host, and a real Docker container's process where the
check needs one in a server. Docker's and the hub's API clients are the stand-ins
of test_meter_state.py. Ticks are awaited one by one: no sleeps.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from datetime import timedelta
from types import SimpleNamespace

import pytest
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from jupyter_gpu_meter.isolation import POLICY, Breach
from jupyter_gpu_meter.ledger import Ledger
from jupyter_gpu_meter.pricing import Pricing
from jupyter_gpu_meter.sampler import GPUReading, NVMLSampler, Tick
from jupyter_gpu_meter.service.app import MeterService
from jupyter_gpu_meter.service.gpus import gpu_rows, isolation_rows
from jupyter_gpu_meter.service.metrics import exposition, isolation_families
from jupyter_gpu_meter.service.state import MeterState
from jupyter_gpu_meter.sessions import ManagedContainer, Opening, SessionChanges
from tests.test_meter_state import HUB_ID, T0, FakeDocker, FakeHub
from tests.test_usage_web import H100, body, fetch, serve_app
from tests.test_usage_web import NOW as WEB_NOW

#: a PID no process has here (above the kernel's pid_max default of 4194304)
GONE = 4_194_000


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


@pytest.fixture
def fake_gpus(fake_nvml):
    fake_nvml.add_gpu()
    fake_nvml.add_gpu()
    fake_nvml.write()
    return fake_nvml


@pytest.fixture
def make_meter(tmp_path, fake_gpus):
    meters = []

    async def make(hub=None, **policies):
        clock = Clock()
        config = Config({"HubIdentity": {"hub_id": HUB_ID}, "Policies": policies})
        meter = MeterService(
            db_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}", config=config, clock=clock
        )
        meter.writer_id = "test"
        meter._setup(docker_api=FakeDocker(), hub_api=hub or FakeHub())
        await meter._in_ledger_thread(meter.ledger.ensure_schema)
        meter.sampler = NVMLSampler(clock=clock)
        meter.sampler.open()
        meters.append(meter)
        meter.test_clock = clock
        return meter

    yield make
    for meter in meters:
        meter.sampler.close()
        meter.ledger_executor.shutdown()
        meter.ledger.close()


async def tick(meter, seconds=1):
    meter.test_clock.now += timedelta(seconds=seconds)
    await meter._tick()
    await meter.runner.isolation.settled()  # the new breaches' decisions and stops


async def run(meter, container_id, user, gpu, server=""):
    """`user`'s server, running in `container_id` and holding GPU `gpu` (or none)."""
    gpus = () if gpu is None else (gpu,)
    await meter._handle_event(
        meter.docker_api.run(container_id, user=user, server=server, gpus=gpus)
    )


def isolation_decisions(meter):
    return meter.ledger.decisions(policy=POLICY)


@pytest.fixture
def host_process():
    """A process of this machine's host, in no container (a child of the test)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield child.pid
    child.kill()
    child.wait()


@pytest.fixture
def container_process(docker_client):
    """A real container with a long `sleep`: (its id, the host PID of its process)."""
    container = docker_client.containers.run(
        "jupyter-gpu-meter/notebook:test",
        ["sleep", "600"],
        name=f"jgm-isolation-{secrets.token_hex(4)}",
        detach=True,
        network_mode="none",
    )
    try:
        container.reload()
        yield container.id, container.attrs["State"]["Pid"]
    finally:
        container.remove(force=True)


async def test_a_host_process_on_a_servers_gpu_is_flagged_once_recorded_and_counted(
    make_meter, fake_gpus, host_process, capsys
):
    meter = await make_meter()
    gpu0, gpu1 = fake_gpus.uuids
    await run(meter, "a" * 64, "ada", gpu0)
    fake_gpus.add_process(0, host_process, 1 << 30)
    fake_gpus.add_process(1, os.getpid(), 1 << 20)  # on a GPU no server holds: fine
    fake_gpus.write()
    for _ in range(4):
        await tick(meter)
    # a host process is flagged at once where the sampler says "host"; one that it cannot
    # place ("unknown": before the sampler filled `where`) from its second tick on
    ((breach, since),) = meter.state.breaches
    assert (breach.pid, breach.gpu_uuid, breach.gpu_owner) == (host_process, gpu0, "a" * 64)
    assert breach.where in ("host", "unknown") and breach.container_id is None
    assert since <= T0 + timedelta(seconds=2)
    assert meter.state.breaches_total == 1
    logged = [line for line in capsys.readouterr().err.splitlines() if "Isolation breach" in line]
    assert len(logged) == 1 and f"PID {host_process}" in logged[0] and gpu0 in logged[0]
    (decision,) = isolation_decisions(meter)
    assert (decision.user, decision.server, decision.action) == ("ada", "", "report")
    assert decision.outcome == "reported" and decision.container_id == "a" * 64
    assert decision.reason.startswith(f"isolation breach: PID {host_process} (")
    assert f"uses GPU {gpu0}, held by ada's server" in decision.reason
    assert meter.runner.hub.stopped == []

    view = meter.state.view()
    text = exposition(isolation_families(view)).decode()
    assert "jupyter_gpu_meter_isolation_breaches_total 1.0" in text
    assert "jupyter_gpu_meter_isolation_breaches 1.0" in text
    (row,) = isolation_rows(view.breaches, view.running, view.last_tick)
    assert (row["gpu_index"], row["holder"], row["pid"]) == (0, "ada", host_process)

    # gone: no breach now, the count stays; back: a new one
    fake_gpus.remove_process(0, host_process)
    fake_gpus.write()
    await tick(meter)
    assert meter.state.breaches == () and meter.state.breaches_total == 1
    fake_gpus.add_process(0, host_process)
    fake_gpus.write()
    await tick(meter)
    await tick(meter)
    assert len(meter.state.breaches) == 1 and meter.state.breaches_total == 2
    assert len(isolation_decisions(meter)) == 2


async def test_api_gpus_gives_admins_everything_and_the_holder_only_a_count(
    make_meter, fake_gpus, host_process
):
    meter = await make_meter()
    gpu0, gpu1 = fake_gpus.uuids
    await run(meter, "a" * 64, "ada", gpu0)
    await run(meter, "c" * 64, "cy", None)  # CPU only
    fake_gpus.add_process(0, host_process)
    fake_gpus.write()
    await tick(meter)
    await tick(meter)
    view = meter.state.view()
    args = (view.last_tick, None, view.running)
    admin = gpu_rows(*args, viewer="admin", sees_everyone=True, breaches=view.breaches)
    (seen,) = admin[0]["breaches"]
    assert seen["pid"] == host_process and seen["where"] in ("host", "unknown")
    assert seen["user"] is None and seen["server"] is None and seen["since"].endswith("Z")
    assert admin[1]["breaches"] == []
    ada = gpu_rows(*args, viewer="ada", sees_everyone=False, breaches=view.breaches)
    (foreign,) = ada[0]["breaches"]
    assert set(foreign.values()) == {None, seen["since"]}  # that it is there, nothing more
    bob = gpu_rows(*args, viewer="bob", sees_everyone=False, breaches=view.breaches)
    assert bob[0]["breaches"] == [] and bob[0]["holder"] is None


async def test_a_process_that_ended_leaves_its_last_samples_and_no_breach(make_meter, fake_gpus):
    meter = await make_meter()
    await run(meter, "a" * 64, "ada", fake_gpus.uuids[0])
    fake_gpus.add_sample(0, GONE, 1_700_000_000_000_000, sm=50)  # read once, then never again
    fake_gpus.write()
    for _ in range(3):
        await tick(meter)
        assert meter.state.breaches == ()
    assert meter.state.breaches_total == 0 and isolation_decisions(meter) == []
    # a process the meter cannot place that stays on the GPU is one
    fake_gpus.add_process(0, GONE)
    fake_gpus.write()
    await tick(meter)
    await tick(meter)
    ((breach, _),) = meter.state.breaches
    assert (breach.pid, breach.where) == (GONE, "unknown")


async def test_a_process_in_no_server_stops_nothing_and_the_decision_says_so(
    make_meter, fake_gpus, host_process
):
    meter = await make_meter(stop_on_isolation_breach=True)
    await run(meter, "b" * 64, "bob", fake_gpus.uuids[1], server="big")
    fake_gpus.add_process(1, host_process)
    fake_gpus.write()
    await tick(meter)
    await tick(meter)
    (decision,) = isolation_decisions(meter)
    assert (decision.user, decision.server, decision.action) == ("bob", "big", "report")
    assert decision.outcome.startswith("reported; nothing stopped: the process runs in no server")
    assert 'held by bob\'s server "big"' in decision.reason
    await meter.runner.run_once()
    assert meter.runner.hub.stopped == []


@pytest.mark.docker
async def test_a_servers_process_on_its_own_gpu_is_never_flagged(
    make_meter, fake_gpus, container_process
):
    meter = await make_meter(stop_on_isolation_breach=True)
    container_id, pid = container_process
    await run(meter, container_id, "ada", fake_gpus.uuids[0])
    fake_gpus.add_process(0, pid, 1 << 30)
    fake_gpus.write()
    for _ in range(5):
        await tick(meter)
        assert meter.state.breaches == ()
    assert meter.state.last_tick.processes[0].container_id == container_id  # attributed
    assert isolation_decisions(meter) == [] and meter.runner.hub.stopped == []


@pytest.mark.docker
@pytest.mark.parametrize("dry_run", [False, True])
async def test_the_offending_server_is_stopped_never_the_one_whose_gpu_it_is(
    make_meter, fake_gpus, container_process, dry_run
):
    meter = await make_meter(stop_on_isolation_breach=True, dry_run=dry_run)
    container_id, pid = container_process
    gpu0, gpu1 = fake_gpus.uuids
    await run(meter, container_id, "ada", gpu0)
    await run(meter, "b" * 64, "bob", gpu1)
    fake_gpus.add_process(1, pid, 1 << 30)  # ada's process on bob's GPU
    fake_gpus.write()
    await tick(meter)  # a process in a server is flagged on its first tick
    ((breach, _),) = meter.state.breaches
    assert (breach.where, breach.container_id, breach.gpu_owner) == (
        "container",
        container_id,
        "b" * 64,
    )
    (decision,) = isolation_decisions(meter)
    assert (decision.user, decision.policy, decision.action) == ("ada", POLICY, "stop")
    assert re.fullmatch(
        # the name where the sampler reads it (/proc/<pid>/comm)
        rf"isolation breach: PID {pid} \((sleep|name unknown)\) in ada's server uses GPU {gpu1}, "
        r"held by bob's server",
        decision.reason,
    ), decision.reason
    if dry_run:
        assert decision.outcome == "would stop (dry run)" and decision.dry_run
        assert meter.runner.hub.stopped == [] and container_id not in meter.state.stop_reasons
    else:
        assert decision.outcome == "stopped" and meter.runner.hub.stopped == [("ada", "")]
        assert meter.state.stop_reasons[container_id] == decision.reason
    await tick(meter)
    await meter.runner.run_once()
    assert len(isolation_decisions(meter)) == 1  # not new: nothing more
    assert ("bob", "") not in meter.runner.hub.stopped


@pytest.mark.docker
async def test_a_failed_stop_is_tried_again_at_the_next_policy_check(
    make_meter, fake_gpus, container_process
):
    hub = FakeHub(refuse={"ada": HTTPClientError(503, "hub down")})
    meter = await make_meter(hub, stop_on_isolation_breach=True)
    container_id, pid = container_process
    await run(meter, container_id, "ada", None)  # a CPU-only server: any GPU is a breach
    fake_gpus.add_process(0, pid)
    fake_gpus.write()
    await tick(meter)
    (failed,) = isolation_decisions(meter)
    assert failed.outcome.startswith("failed: ") and hub.stopped == []
    assert meter.state.policy_errors == 1
    hub.refuse = {}
    meter.test_clock.now += timedelta(seconds=30)  # the next policy check
    await meter.runner.run_once()
    assert hub.stopped == [("ada", "")]
    stopped, _ = isolation_decisions(meter)
    assert stopped.outcome == "stopped" and "which no server holds" in stopped.reason
    await meter.runner.run_once()
    assert hub.stopped == [("ada", "")]  # once


# --- over HTTP: api/gpus, the admin page, /metrics (the web app of test_usage_web.py) -------


@pytest.fixture
def web_meter(tmp_path):
    """What the web app reads of a meter: a ledger, prices, and its state, in which
    ada's server "train" holds GPU-A of three."""
    ledger = Ledger(f"sqlite:///{tmp_path}/web.sqlite")
    ledger.upgrade()
    pricing = Pricing(prices={H100: "2.49"}, currency="EUR")
    state = MeterState()
    ada = ManagedContainer(
        "e" * 64, "ada", "train", ("GPU-A",), H100, "gpu-1", None, True, WEB_NOW, None, None
    )
    state.apply(SessionChanges(opened=(Opening(ada, WEB_NOW, pricing.snapshot(H100, 1)),)))
    gpus = tuple(GPUReading(f"GPU-{n}", i, H100, 0, 0, 80 << 30) for i, n in enumerate("ABC"))
    state.sampled(Tick(WEB_NOW, gpus, (), 0.001))
    yield SimpleNamespace(
        ledger=ledger,
        pricing=pricing,
        state=state,
        health=lambda: {"gpu_sampling": "on", "pending_writes": 0, **state.health()},
    )
    ledger.close()


async def test_breaches_over_http_for_admins_the_holder_and_prometheus(web_meter):
    meter = web_meter
    state, ledger = meter.state, meter.ledger
    (ada,) = state.running.values()
    server, app = serve_app(meter)
    try:
        # none now, and no decision: no box at all
        assert 'id="isolation"' not in (await fetch(app, "admin", "admin-token")).body.decode()
        foreign = "f" * 64
        found = Breach("GPU-A", 4242, "python", "unmanaged", foreign, ada.container_id)
        state.isolation_checked(((found, WEB_NOW),), 1)
        reason = f"isolation breach: PID 4242 (python) in the unmetered container {foreign[:12]}"
        ledger.record_decision(
            at=WEB_NOW,
            user="ada",
            server="train",
            container_id=ada.container_id,
            policy=POLICY,
            action="report",
            reason=reason,
            dry_run=False,
            outcome="reported",
        )
        admin = body(await fetch(app, "api/gpus", "admin-token"))["gpus"]
        assert admin[0]["breaches"] == [
            {
                "pid": 4242,
                "process_name": "python",
                "where": "unmanaged",
                "container_id": foreign,
                "user": None,
                "server": None,
                "since": "2026-11-20T12:00:00Z",
            }
        ]
        assert admin[1]["breaches"] == []
        (only_that,) = body(await fetch(app, "api/gpus", "ada-token"))["gpus"][0]["breaches"]
        assert only_that["pid"] is None and only_that["since"] == "2026-11-20T12:00:00Z"
        assert body(await fetch(app, "api/gpus", "bob-token"))["gpus"][0]["breaches"] == []

        page = (await fetch(app, "admin", "admin-token")).body.decode()
        box = page[page.index('id="isolation"') :]
        assert "Isolation breaches" in box and 'data-pid="4242"' in box
        assert "ada/train" in box and f"unmetered container {foreign[:12]}" in box
        assert reason in box and "report, reported" in box

        text = (await fetch(app, "metrics", "prometheus-token")).body.decode()
        assert "jupyter_gpu_meter_isolation_breaches_total 1.0" in text
        assert "jupyter_gpu_meter_isolation_breaches 1.0" in text

        state.isolation_checked((), 0)  # gone: the box says so, with the decision
        page = (await fetch(app, "admin", "admin-token")).body.decode()
        assert "None now." in page and reason in page
        text = (await fetch(app, "metrics", "prometheus-token")).body.decode()
        assert "jupyter_gpu_meter_isolation_breaches 0.0" in text
    finally:
        server.stop()


class SlowHub(FakeHub):
    """A hub whose stops wait until the test lets them through."""

    def __init__(self):
        super().__init__()
        self.let_through = asyncio.Event()

    async def stop_server(self, user, server=""):
        await self.let_through.wait()
        return await super().stop_server(user, server)


@pytest.mark.docker
async def test_a_slow_hub_never_holds_up_the_sampler(make_meter, fake_gpus, container_process):
    hub = SlowHub()
    meter = await make_meter(hub, stop_on_isolation_breach=True)
    container_id, pid = container_process
    await run(meter, container_id, "ada", None)
    fake_gpus.add_process(0, pid)
    fake_gpus.write()
    for _ in range(3):  # the stop waits for the hub; the ticks go on
        meter.test_clock.now += timedelta(seconds=1)
        await meter._tick()
    assert meter.state.last_tick.at == T0 + timedelta(seconds=3)
    assert meter.state.breaches_total == 1 and hub.stopped == []
    hub.let_through.set()
    await meter.runner.isolation.settled()
    assert hub.stopped == [("ada", "")]
    (decision,) = isolation_decisions(meter)
    assert decision.outcome == "stopped"  # recorded once the hub answered
