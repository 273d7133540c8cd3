"""The per-node meter agent and the hub's meter in cluster mode, against the real Docker
engine of this host and real ledgers (SQLite, PostgreSQL).

No swarm is needed: a Swarm task's container is a container with the managed labels,
an empty ``gpus`` label and Docker's ``DOCKER_RESOURCE_NVIDIA-GPU`` in its
environment. Two nodes on one engine are two agents with two node names, each
of its own hub id, so that each meters only its own containers as two engines
would. A node dies when its agent is no longer called (in process) or is killed
with SIGKILL (subprocess); the hub's node sweep runs at a time the test chooses.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
import sqlalchemy as sa
from traitlets.config import Config

from jupyter_gpu_meter import labels
from jupyter_gpu_meter.clock import parse_docker_time, utcnow
from jupyter_gpu_meter.container import container_labels
from jupyter_gpu_meter.ledger import NODE_LOST, Ledger
from jupyter_gpu_meter.pricing import Pricing
from jupyter_gpu_meter.service import nodes
from jupyter_gpu_meter.service.agent import AgentConfigError, MeterAgent
from jupyter_gpu_meter.service.app import MeterService
from jupyter_gpu_meter.service.gpus import gpu_rows
from jupyter_gpu_meter.service.reader import LiveState
from tests.hub import IMAGE
from tests.metering import wait_until
from tests.test_ledger import UNREACHABLE_POSTGRES
from tests.test_meter_state import FakeHub

H100 = "NVIDIA H100 80GB HBM3"
PRICING = Pricing(prices={H100: "3600"})
SIMULATED = f"2x{H100}"


class Clock:
    """The agents' and the hub's "now": set by the test (the real time when made)."""

    def __init__(self):
        self.now = utcnow()

    def __call__(self):
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def containers(docker_client):
    """start(hub, user, uuids): a Swarm-like notebook container of `hub`, running."""
    prefix = f"jgm-agent-{secrets.token_hex(4)}"
    made = []

    def start(hub, user="ada", uuids=("GPU-x",), priced_for=None):
        found = container_labels(
            user=user, server="", gpu_uuids=(), gpu_model=H100, profile="gpu", hub_id=hub
        )
        found[labels.GPU_COUNT] = str(len(uuids))
        found.update(PRICING.snapshot(H100, priced_for or len(uuids)).to_labels())
        container = docker_client.containers.run(
            IMAGE,
            ["sleep", "600"],
            name=f"{prefix}-{len(made)}",
            labels=found,
            environment={labels.SWARM_GPUS_ENV: ",".join(uuids)},
            detach=True,
            entrypoint=[],
        )
        made.append(container)
        return container

    yield start
    for container in made:
        container.remove(force=True)


def docker_times(container):
    container.reload()
    state = container.attrs["State"]
    return parse_docker_time(state["StartedAt"]), parse_docker_time(state["FinishedAt"])


@pytest.fixture
def make_meters(db_url, docker_client):
    made = []

    def agent(node, hub, clock, interval=1.0, config=None):
        config = Config(
            {
                "HubIdentity": {"hub_id": hub},
                "GPUInventory": {"simulated": SIMULATED},
                **(config or {}),
            }
        )
        meter = MeterAgent(db_url=db_url, config=config, node=node, clock=clock)
        meter.heartbeat_interval = interval
        meter._setup(docker_api=docker_client.api)
        made.append(meter)
        return meter

    def hub(clock, config=None, hub_api=None):
        config = Config({"HubIdentity": {"hub_id": "the-hub"}, **(config or {})})
        meter = MeterService(db_url=db_url, config=config, cluster=True, clock=clock)
        meter.writer_id = "hub"
        meter._setup(hub_api=hub_api or FakeHub())
        made.append(meter)
        return meter

    yield agent, hub
    for meter in made:
        meter.ledger_executor.shutdown()
        meter.ledger.close()


async def start_agent(agent):
    """What the agent does at start, step by step (its loops, without their timers)."""
    await agent._in_ledger_thread(agent.ledger.ensure_schema)
    agent.gpus = agent._discover_gpus()
    await agent._heartbeat()
    await agent._reconcile()


# --- the agent --------------------------------------------------------------------------


async def test_an_agent_meters_swarm_containers_with_its_node(make_meters, containers):
    make_agent, _ = make_meters
    hub = f"jgm-agent-{secrets.token_hex(3)}"
    clock = Clock()
    agent = make_agent("node-a", hub, clock)
    assert agent.writer_id.startswith("node-a-")
    uuids = [gpu.uuid for gpu in agent.inventory_source.discover().gpus]
    container = containers(hub, uuids=uuids)
    other = containers("another-hub", user="eve")
    await start_agent(agent)

    session = agent.ledger.get_session(container.id)
    assert session.node == "node-a" and session.gpu_uuids == tuple(uuids)
    started, _ = docker_times(container)
    assert abs((session.started_at - started).total_seconds()) < 1
    assert agent.ledger.get_session(other.id) is None
    (node,) = agent.ledger.nodes()
    assert node.name == "node-a" and [gpu.uuid for gpu in node.gpus] == uuids
    assert node.heartbeat_interval_s == 1.0 and node.agent_started_at <= node.last_heartbeat_at

    # its sampler's rollups carry its writer id
    await agent._open_sampler()
    await agent._tick()
    await agent._flush()
    with agent.ledger.engine.connect() as connection:
        writers = connection.execute(sa.text("SELECT DISTINCT writer FROM rollups")).scalars()
        assert list(writers) == [agent.writer_id]

    container.stop(timeout=0)
    await agent._reconcile()
    session = agent.ledger.get_session(container.id)
    _, finished = docker_times(container)
    assert abs((session.ended_at - finished).total_seconds()) < 1


async def test_two_agents_share_one_ledger_and_close_only_their_own(make_meters, containers):
    make_agent, _ = make_meters
    hubs = [f"jgm-agent-{secrets.token_hex(3)}" for _ in range(2)]
    clock = Clock()
    first, second = make_agent("node-a", hubs[0], clock), make_agent("node-b", hubs[1], clock)
    a, b = containers(hubs[0], "ada"), containers(hubs[1], "bob")
    await start_agent(first)
    await start_agent(second)
    await first._reconcile()  # node-a does not see bob's container: it is not node-a's
    assert first.ledger.get_session(b.id).running
    assert first.ledger.get_session(b.id).node == "node-b"
    assert [n.name for n in first.ledger.nodes()] == ["node-a", "node-b"]
    assert first.events_key != second.events_key  # each resumes its own engine's events
    a.stop(timeout=0)
    await second._reconcile()
    assert first.ledger.get_session(a.id).running  # node-b leaves node-a's sessions alone


async def test_a_lost_node_ends_its_sessions_at_its_last_heartbeat_and_reconciles_after(
    make_meters, containers
):
    make_agent, make_hub = make_meters
    hub_id = f"jgm-agent-{secrets.token_hex(3)}"
    clock = Clock()
    agent = make_agent("node-a", hub_id, clock, interval=15.0)
    survives, stops_after, stopped_before = (containers(hub_id, f"u{i}") for i in range(3))
    await start_agent(agent)
    stopped_before.stop(timeout=0)  # the agent misses it: it dies before it looks
    clock.now = utcnow()
    await agent._heartbeat()  # its last
    last_heartbeat = agent.ledger.get_node("node-a").last_heartbeat_at

    hub = make_hub(clock)
    await nodes.follow_the_ledger(hub)
    assert set(hub.state.running) == {survives.id, stops_after.id, stopped_before.id}
    # the agent is gone; 30 s later (2 intervals) the node is not yet lost, then it is
    clock.now = last_heartbeat + timedelta(seconds=30)
    await nodes.follow_the_ledger(hub)
    assert hub.ledger.get_node("node-a").lost_at is None
    clock.now += timedelta(microseconds=1)
    await nodes.follow_the_ledger(hub)
    assert hub.state.running == {}
    assert hub.ledger.get_node("node-a").lost_at == clock.now
    for container in (survives, stops_after, stopped_before):
        session = hub.ledger.get_session(container.id)
        assert (session.ended_at, session.end_reason) == (last_heartbeat, NODE_LOST)
    assert hub.inventory_source.discover().gpus == ()  # a lost node's GPUs are not offered

    stops_after.stop(timeout=0)  # after the last heartbeat
    clock.now = utcnow()
    back = make_agent("node-a", hub_id, clock, interval=15.0)  # the agent restarted
    await back._in_ledger_thread(back.ledger.ensure_schema)
    back.gpus = back._discover_gpus()
    await back._heartbeat()  # the hub had lost it: reconciles
    await back._flush()

    again = hub.ledger.get_session(survives.id)
    assert again.running and again.end_reason is None
    started, _ = docker_times(survives)
    assert abs((again.started_at - started).total_seconds()) < 1
    kept = hub.ledger.get_session(stops_after.id)
    assert (kept.ended_at, kept.end_reason) == (last_heartbeat, NODE_LOST)
    moved = hub.ledger.get_session(stopped_before.id)
    _, finished = docker_times(stopped_before)
    assert abs((moved.ended_at - finished).total_seconds()) < 1
    assert moved.end_reason.startswith("exited with code")
    with hub.ledger.engine.connect() as connection:
        count = connection.execute(sa.text("SELECT count(*) FROM sessions")).scalar_one()
    assert count == 3  # never a second row

    await nodes.follow_the_ledger(hub)
    assert set(hub.state.running) == {survives.id}
    assert hub.ledger.get_node("node-a").lost_at is None
    inventory = hub.inventory_source.discover()
    rows = gpu_rows(None, inventory, hub.state.running, viewer="admin", sees_everyone=True)
    assert [row["allocated"] for row in rows] == [False, False]  # x is no simulated GPU
    assert LiveState(hub.state).running()[survives.id].node == "node-a"


async def test_a_failed_heartbeat_is_logged_and_tried_on_the_next_period(docker_client, capsys):
    config = Config({"HubIdentity": {"hub_id": "h"}})
    agent = MeterAgent(db_url=UNREACHABLE_POSTGRES, config=config, node="n1")
    agent._setup(docker_api=docker_client.api)
    try:
        await agent._heartbeat()  # raises nothing: the loop keeps its period
        assert "Heartbeat failed (OperationalError), retrying in 15.0s" in capsys.readouterr().err
    finally:
        agent.ledger_executor.shutdown()


class BrokenInventory:
    """A GPU inventory that fails (a driver that answers nothing sensible)."""

    def discover(self):
        raise RuntimeError("NVML: unknown error")


async def test_gpus_an_agent_cannot_list_are_reported_as_none(make_meters, capsys):
    make_agent, _ = make_meters
    agent = make_agent("node-a", "h", Clock())
    agent.inventory_source = BrokenInventory()
    assert agent._discover_gpus() == []
    logged = capsys.readouterr().err
    assert "GPU inventory failed (NVML: unknown error): heartbeats report no GPUs" in logged


async def test_a_session_the_ledger_refuses_is_logged_as_unbilled(make_meters, containers, capsys):
    make_agent, _ = make_meters
    hub_id = f"jgm-agent-{secrets.token_hex(3)}"
    agent = make_agent("node-a", hub_id, Clock())
    wrong = containers(hub_id, "ada", uuids=("GPU-x",), priced_for=2)  # 1 GPU, priced for 2
    await start_agent(agent)
    assert agent.ledger.get_session(wrong.id) is None
    logged = capsys.readouterr().err
    assert f"container {wrong.id[:12]}) on node node-a: ValueError" in logged
    assert "It runs unbilled: the agent cannot stop servers (no hub API)" in logged
    assert agent.state.session_open_failures == 1 and wrong.id in agent.state.unbilled


async def test_the_hub_in_cluster_mode_watches_no_docker(make_meters):
    _, make_hub = make_meters
    hub = make_hub(Clock())
    assert hub.docker_api is None and hub.ssh_keys is None
    loops = await hub._loops()
    try:
        assert len(loops) == 2  # the node sweep and the policies: no events, no sampling
    finally:
        for loop in loops:
            loop.close()


def test_an_agent_needs_the_hubs_id(docker_client, tmp_path, monkeypatch):
    monkeypatch.delenv("JUPYTER_GPU_METER_HUB_ID", raising=False)
    agent = MeterAgent(db_url=f"sqlite:///{tmp_path / 'l.sqlite'}")
    with pytest.raises(AgentConfigError, match="--hub-id=<id> or \\$JUPYTER_GPU_METER_HUB_ID"):
        agent._setup(docker_api=docker_client.api)


def test_an_agents_node_defaults_to_dockers_name(docker_client, tmp_path):
    config = Config({"HubIdentity": {"hub_id": "h"}, "MeterService": {"cluster": True}})
    agent = MeterAgent(db_url=f"sqlite:///{tmp_path / 'l.sqlite'}", config=config)
    agent._setup(docker_api=docker_client.api)
    try:
        assert agent.node == docker_client.info()["Name"]
        assert agent.cluster is False  # a shared config's cluster mode is the hub's
        assert agent.events_key.endswith("@" + agent.node)
    finally:
        agent.ledger_executor.shutdown()


def test_the_agent_command_without_a_hub_id_says_what_to_give(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_GPU_METER_HUB_ID"}
    result = subprocess.run(
        [sys.executable, "-m", "jupyter_gpu_meter.cli", "agent", "--node=n1"]
        + [f"--db-url=sqlite:///{tmp_path / 'l.sqlite'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "needs the hub's id: give --hub-id=<id> or $JUPYTER_GPU_METER_HUB_ID" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("node", ["n" * 101, "a,b", " a"])
def test_a_node_name_the_ledger_cannot_hold_is_refused(node):
    with pytest.raises(AgentConfigError, match="at most 100 characters, no commas"):
        MeterAgent(node=node)


# --- the agent as a process -------------------------------------------------------------


def run_agent(db_url, node, hub_id, interval):
    env = {**os.environ, "JUPYTER_GPU_METER_SIMULATED_GPUS": SIMULATED}
    return subprocess.Popen(
        [sys.executable, "-m", "jupyter_gpu_meter.cli", "agent", f"--node={node}"]
        + [f"--db-url={db_url}", f"--hub-id={hub_id}", f"--heartbeat-interval={interval}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_agents_as_processes_killed_and_restarted(postgres_url, containers):
    """Two agent processes on one PostgreSQL; one is SIGKILLed, swept and restarted."""
    hubs = [f"jgm-agent-{secrets.token_hex(3)}" for _ in range(2)]
    runs, started = [], {}
    ledger = Ledger(postgres_url)
    ledger.ensure_schema()
    try:
        a1, a2 = containers(hubs[0], "ada"), containers(hubs[0], "amy")
        b = containers(hubs[1], "bob")
        runs.append(run_agent(postgres_url, "node-a", hubs[0], 0.5))
        runs.append(run_agent(postgres_url, "node-b", hubs[1], 30))
        ids = [a1.id, a2.id, b.id]
        wait_until(lambda: all(ledger.get_session(i) for i in ids), 60, "three sessions")
        for container in (a1, a2, b):
            started[container.id] = docker_times(container)[0]

        runs[0].send_signal(signal.SIGKILL)
        runs[0].wait(10)
        last = ledger.get_node("node-a").last_heartbeat_at
        # the hub's sweep, at the time the test chooses: 2 intervals (1 s) after the last
        assert ledger.sweep_lost_nodes(last + timedelta(seconds=1)) == {}
        swept = ledger.sweep_lost_nodes(last + timedelta(seconds=1.001))
        assert swept == {"node-a": sorted([a1.id, a2.id])}
        assert ledger.get_session(b.id).running
        a2.stop(timeout=0)

        runs[0] = run_agent(postgres_url, "node-a", hubs[0], 0.5)
        wait_until(lambda: ledger.get_session(a1.id).running, 60, "the session reopened")
        kept = ledger.get_session(a2.id)
        assert (kept.ended_at, kept.end_reason) == (last, NODE_LOST)
        assert kept.ended_at < docker_times(a2)[1]  # never billed past the last heartbeat

        a1.stop(timeout=0)
        b.stop(timeout=0)
        wait_until(
            lambda: not ledger.get_session(a1.id).running and not ledger.get_session(b.id).running,
            60,
            "both sessions closed",
        )
        for container in (a1, b):
            session = ledger.get_session(container.id)
            docker_start, docker_end = docker_times(container)
            assert abs((session.started_at - docker_start).total_seconds()) < 1
            assert abs((session.ended_at - docker_end).total_seconds()) < 1
        with ledger.engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT count(*) FROM sessions")).scalar_one()
        assert rows == 3
    finally:
        for run in runs:
            if run.poll() is None:
                run.terminate()
                run.wait(10)
        ledger.close()
