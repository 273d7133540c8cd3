"""The hub's policies in cluster mode: GPU activity from the agents' per-minute rollups,
and the stop reason through the ledger.

A real agent (:class:`~jupyter_gpu_meter.service.agent.MeterAgent`) meters Swarm-like
containers on this host's Docker engine into a real ledger (SQLite, PostgreSQL) with
simulated GPUs whose utilization a file sets; the hub's meter in cluster mode reads
that ledger and stops servers through a stand-in of the hub's API. Both run on one
clock the test moves: a minute passes without a sleep. See tests/test_agent.py.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from traitlets.config import Config

from jupyter_gpu_meter.ledger import Ledger, RollupRow
from jupyter_gpu_meter.pricing import Pricing
from jupyter_gpu_meter.service import nodes
from jupyter_gpu_meter.service.app import MeterService
from tests.test_agent import (  # noqa: F401 (fixtures)
    H100,
    Clock,
    containers,
    db_url,
    make_meters,
    start_agent,
)
from tests.test_ledger import UNREACHABLE_POSTGRES
from tests.test_meter_state import FakeHub, not_found

MINUTE = timedelta(minutes=1)
#: the hub's policies in these tests: stop after 2 idle minutes, vouch 5 minutes
POLICIES = {"Policies": {"gpu_idle_timeout": 120, "keep_alive_window": 300}}


@pytest.fixture
def cluster(make_meters, containers, tmp_path):  # noqa: F811 (fixtures)
    """(agent, hub, clock, set_utilization, start): one node's agent and the hub's meter."""
    make_agent, make_hub = make_meters
    hub_id = f"jgm-policies-{secrets.token_hex(3)}"
    clock = Clock()
    utilization = tmp_path / "utilization.json"
    sampler = {"GPUSampler": {"simulated_utilization_file": str(utilization)}}
    agent = make_agent("node-a", hub_id, clock, interval=3600.0, config=sampler)
    hub = make_hub(clock, config=POLICIES)

    def set_utilization(values):
        utilization.write_text(json.dumps(values))

    def start(user, gpus):
        return containers(hub_id, user, uuids=gpus)

    return agent, hub, clock, set_utilization, start


async def agent_minute(agent, clock, at):
    """The agent at `at`: a GPU sample, its rollups written, a heartbeat."""
    clock.now = at
    await agent._tick()
    await agent._flush()
    await agent._heartbeat()


async def hub_check(hub):
    """The hub's node sweep, then a policy check (what its two loops do)."""
    await nodes.follow_the_ledger(hub)
    await hub._check_policies()
    return hub.runner.hub


async def agent_sees_docker_events(agent, since_ns):
    """The agent handles the Docker events since `since_ns` (its events thread's work)."""
    for event in agent.tracker.events(since_ns, time.time_ns()):
        await agent._handle_event(event)


async def test_an_idle_server_is_stopped_with_its_reason_and_a_busy_one_vouched_for(cluster):
    agent, hub, clock, set_utilization, start = cluster
    idle_gpu, busy_gpu = (gpu.uuid for gpu in agent.inventory_source.discover().gpus)
    set_utilization({idle_gpu: 2, busy_gpu: 80})
    idle, busy = start("ada", [idle_gpu]), start("bob", [busy_gpu])
    await start_agent(agent)
    await agent._open_sampler()
    started = agent.ledger.get_session(idle.id).started_at

    for minute in range(2):
        await agent_minute(agent, clock, started + minute * MINUTE)
    clock.now = started + MINUTE + timedelta(seconds=1)
    fake_hub = await hub_check(hub)
    assert fake_hub.stopped == []  # idle 61 s: not yet
    assert fake_hub.activity == ["bob"]  # bob's GPU is busy: vouched for
    assert hub.runner.activity[idle.id][0] == started

    await agent_minute(agent, clock, started + 2 * MINUTE)
    fake_hub = await hub_check(hub)
    assert fake_hub.stopped == [("ada", "")]  # idle 2 min: stopped
    assert fake_hub.activity == ["bob", "bob"]
    assert hub.ledger.get_session(idle.id).stop_reason == "GPUs idle for 2 min"
    (decision,) = hub.ledger.decisions(user="ada")
    assert (decision.policy, decision.outcome) == ("gpu-idle", "stopped")

    # the hub's spawner stops the container; the agent sees it die, not why
    since_ns = time.time_ns()
    idle.stop(timeout=0)
    await agent_sees_docker_events(agent, since_ns)
    session = hub.ledger.get_session(idle.id)
    assert session.end_reason == "stopped: GPUs idle for 2 min"
    assert hub.ledger.get_session(busy.id).running
    await hub_check(hub)
    assert set(hub.state.running) == {busy.id}


async def test_a_gpu_its_agent_finds_lost_stops_its_server_and_is_shown_unhealthy(cluster):
    """The agent's GPU sample cannot read a GPU ("GPU is lost"): its heartbeat says so,
    the hub's GPU-health policy stops the server holding it with that reason, the
    cluster's GPU list shows it unhealthy; once it reads again, it is healthy."""
    agent, hub, clock, set_utilization, start = cluster
    lost_gpu, fine_gpu = (gpu.uuid for gpu in agent.inventory_source.discover().gpus)
    set_utilization({lost_gpu: 50, fine_gpu: 50})
    held, other = start("ada", [lost_gpu]), start("bob", [fine_gpu])
    await start_agent(agent)
    await agent._open_sampler()
    started = agent.ledger.get_session(held.id).started_at
    await agent_minute(agent, clock, started)
    assert (await hub_check(hub)).stopped == []

    set_utilization({lost_gpu: {"utilization": 0, "problem": "GPU is lost"}, fine_gpu: 50})
    await agent_minute(agent, clock, started + MINUTE)
    (node,) = hub.ledger.nodes()
    assert {gpu.uuid: gpu.problem for gpu in node.gpus} == {lost_gpu: "GPU is lost", fine_gpu: ""}
    fake_hub = await hub_check(hub)
    assert fake_hub.stopped == [("ada", "")]  # bob's GPU is fine: his server runs on
    assert hub.ledger.get_session(held.id).stop_reason.startswith(f"GPU unhealthy ({lost_gpu}")
    listed = {gpu.uuid: (gpu.healthy, gpu.problem) for gpu in hub.inventory_source.discover().gpus}
    assert listed == {lost_gpu: (False, "GPU is lost"), fine_gpu: (True, "")}

    set_utilization({lost_gpu: 0, fine_gpu: 50})  # it reads again
    await agent_minute(agent, clock, started + 2 * MINUTE)
    await hub_check(hub)
    assert hub.runner.unhealthy == {}
    assert all(gpu.healthy for gpu in hub.inventory_source.discover().gpus)
    assert hub.ledger.get_session(other.id).running


async def test_a_late_agent_never_gets_a_server_stopped(cluster):
    agent, hub, clock, set_utilization, start = cluster
    gpu = agent.inventory_source.discover().gpus[0].uuid
    set_utilization({gpu: 0})
    server = start("ada", [gpu])
    await start_agent(agent)
    await agent._open_sampler()
    started = agent.ledger.get_session(server.id).started_at

    await agent_minute(agent, clock, started)
    await agent_minute(agent, clock, started + MINUTE)
    # the agent's rollups stop (its sampler is stuck); its heartbeats go on
    for late in (3, 10, 60):
        clock.now = started + late * MINUTE
        await agent._heartbeat()
        fake_hub = await hub_check(hub)
        assert fake_hub.stopped == []
        assert hub.runner.activity[server.id] == (None, None)  # unknown: neither idle nor busy
    assert hub.ledger.get_session(server.id).running

    # back: idle from its first minute back, stopped 2 minutes later
    back = started + 61 * MINUTE
    await agent_minute(agent, clock, back)
    assert (await hub_check(hub)).stopped == []
    await agent_minute(agent, clock, back + MINUTE)
    await agent_minute(agent, clock, back + 2 * MINUTE)
    assert (await hub_check(hub)).stopped == [("ada", "")]


# --- the hub's side alone: sessions and rollups written straight into the ledger ----------


@pytest.fixture
def hub_meter(make_meters):  # noqa: F811 (the fixture)
    """make(hub_api): the hub's meter in cluster mode on a ledger with one open session of
    ada on GPU-a (started a minute boundary ago), idle for its first 3 minutes."""
    _, make_hub = make_meters

    async def make(hub_api=None):
        clock = Clock()
        clock.now = clock.now.replace(second=0, microsecond=0)
        hub = make_hub(clock, config=POLICIES, hub_api=hub_api)
        ledger = hub.ledger
        await hub._in_ledger_thread(ledger.ensure_schema)
        price = Pricing(prices={H100: "3600"}).snapshot(H100, 1)
        ledger.open_session(
            container_id="c1",
            user="ada",
            server="",
            gpu_uuids=["GPU-a"],
            gpu_model=H100,
            profile="gpu",
            price=price,
            started_at=clock.now,
            node="node-a",
        )
        ledger.heartbeat(
            "node-a",
            gpus=[],
            agent_version="test",
            agent_started_at=clock.now,
            heartbeat_interval_s=3600,
            at=clock.now,
        )
        ledger.add_rollups(
            RollupRow("c1", "GPU-a", clock.now + m * MINUTE, "a", 60, 1.0, 2, 0) for m in range(3)
        )
        clock.now += 3 * MINUTE
        await nodes.follow_the_ledger(hub)
        return hub

    return make


async def test_a_stop_the_hub_refuses_leaves_no_stop_reason(hub_meter):
    hub = await hub_meter(FakeHub(refuse={("ada", "stop"): not_found()}))
    await hub._check_policies()
    assert hub.state.policy_errors == 1
    assert hub.ledger.get_session("c1").stop_reason is None  # written, then taken back
    hub.ledger.close_session("c1", ended_at=hub.clock(), reason="exited with code 0")
    assert hub.ledger.get_session("c1").end_reason == "exited with code 0"


async def test_a_ledger_that_cannot_be_read_stops_nothing_and_keeps_vouching(hub_meter, capsys):
    hub = await hub_meter()
    hub.runner.activity = {"c1": (hub.clock() - 3 * MINUTE, hub.clock() - MINUTE)}
    ledger, hub.ledger = hub.ledger, Ledger(UNREACHABLE_POSTGRES)
    try:
        await hub._check_policies()
    finally:
        hub.ledger.close()
        hub.ledger = ledger
    assert hub.runner.hub.stopped == []
    assert hub.runner.activity == {"c1": (None, hub.clock() - MINUTE)}
    assert hub.runner.hub.activity == ["ada"]  # busy a minute ago: still vouched for
    assert "Policies: reading the GPUs' activity from the ledger failed" in capsys.readouterr().err


async def test_a_stop_reason_that_cannot_be_written_does_not_hold_up_the_stop(hub_meter, capsys):
    hub = await hub_meter()
    await nodes.follow_activity(hub)
    ledger, hub.ledger = hub.ledger, Ledger(UNREACHABLE_POSTGRES)
    try:
        await hub.runner.run_once()
    finally:
        hub.ledger.close()
        hub.ledger = ledger
    assert hub.runner.hub.stopped == [("ada", "")]
    logged = capsys.readouterr().err
    assert "Could not write why container c1 is being stopped (OperationalError)" in logged


# --- settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policies, refused",
    [
        ({"gpu_idle_timeout": 60}, "c.Policies.gpu_idle_timeout = 60"),
        (
            {"per_profile": {"gpu-1": {"gpu_idle_timeout": 90}}},
            "c.Policies.per_profile['gpu-1']['gpu_idle_timeout'] = 90",
        ),
        ({"keep_alive_window": 119}, "c.Policies.keep_alive_window = 119"),
    ],
)
def test_settings_finer_than_minutes_are_refused_in_cluster_mode(tmp_path, policies, refused):
    config = Config({"Policies": policies, "HubIdentity": {"hub_id": "h"}})
    hub = MeterService(db_url=f"sqlite:///{tmp_path / 'l.sqlite'}", config=config, cluster=True)
    with pytest.raises(nodes.ClusterConfigError) as refusal:
        hub._setup(hub_api=FakeHub())
    message = str(refusal.value)
    assert refused in message
    assert "Give at least 120 seconds (gpu_idle_timeout may be 0: off" in message


@pytest.mark.parametrize(
    "policies",
    [
        {"gpu_idle_timeout": 0, "keep_alive_window": 120},
        {"per_profile": {"cpu": {"gpu_idle_timeout": 0}, "gpu": {"gpu_idle_timeout": 120}}},
        {"keep_alive": False, "keep_alive_window": 30},
    ],
)
def test_settings_of_minutes_or_off_are_kept_in_cluster_mode(tmp_path, policies):
    config = Config({"Policies": policies, "HubIdentity": {"hub_id": "h"}})
    hub = MeterService(db_url=f"sqlite:///{tmp_path / 'l.sqlite'}", config=config, cluster=True)
    hub.writer_id = "hub"
    hub._setup(hub_api=FakeHub())
    hub.ledger_executor.shutdown()
    assert hub.runner.stop_reason is not None


def test_one_host_keeps_its_second_resolution(tmp_path, docker_client):
    config = Config({"Policies": {"gpu_idle_timeout": 30}, "HubIdentity": {"hub_id": "h"}})
    meter = MeterService(db_url=f"sqlite:///{tmp_path / 'l.sqlite'}", config=config)
    meter.writer_id = "meter"
    meter._setup(docker_api=docker_client.api, hub_api=FakeHub())
    meter.ledger_executor.shutdown()
    assert meter.runner.stop_reason is None


def test_the_meter_command_refuses_them_saying_what_is_allowed(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jupyter_gpu_meter.cli", "--MeterService.cluster=True"]
        + ["--Policies.gpu_idle_timeout=60", f"--db-url=sqlite:///{tmp_path / 'l.sqlite'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "refuses: c.Policies.gpu_idle_timeout = 60. Give at least 120 seconds" in result.stderr
    assert "Traceback" not in result.stderr
