"""Nodes in the ledger, on SQLite and PostgreSQL (see test_ledger.py): migration 0009, the
agents' heartbeats, the hub's node sweep ("node lost") and the reconcile's reopen."""

from datetime import timedelta

import pytest
import sqlalchemy as sa
from alembic import command

from jupyter_gpu_meter import labels, sessions
from jupyter_gpu_meter.ledger import NODE_LOST, NodeGPU
from jupyter_gpu_meter.ledger import schema as ledger_schema
from jupyter_gpu_meter.pricing import Pricing
from tests import test_ledger
from tests.test_ledger import H100, T0, at, insert_old_session, rollup

db_url = test_ledger.db_url
clock = test_ledger.clock
make_ledger = test_ledger.make_ledger
ledger = test_ledger.ledger

GPUS = [
    {"uuid": "GPU-a", "index": 0, "model": H100, "memory_total_bytes": 80 << 30},
    NodeGPU("GPU-b", 1, H100, 80 << 30),
]


def start(ledger, container_id="c1", node="gpu-1", started_at=T0, gpus=("GPU-a",)):
    assert ledger.open_session(
        container_id=container_id,
        user="alice",
        server="",
        gpu_uuids=gpus,
        gpu_model=H100,
        profile="gpu-1",
        price=Pricing(prices={H100: "3600"}).snapshot(H100, len(gpus)),
        started_at=started_at,
        node=node,
    )
    return ledger.get_session(container_id)


def beat(ledger, name="gpu-1", seconds=0, interval=15.0, gpus=GPUS):
    return ledger.heartbeat(
        name,
        gpus=gpus,
        agent_version="1.0",
        agent_started_at=T0,
        heartbeat_interval_s=interval,
        at=at(seconds),
    )


# --- migration 0009 ----------------------------------------------------------


def test_upgrading_from_0008_reads_old_sessions_as_one_host(make_ledger):
    ledger = make_ledger()
    with ledger.engine.begin() as connection:
        ledger_schema.upgrade(connection, "0008")
        insert_old_session(connection)
    assert "nodes" not in sa.inspect(ledger.engine).get_table_names()
    ledger.upgrade()
    ledger.check_revision()
    assert ledger.get_session("c1").node == ""
    assert start(ledger, "c2").node == "gpu-1"
    assert ledger.nodes() == []


def test_downgrading_to_0008_drops_only_nodes_and_the_node(ledger):
    start(ledger)
    beat(ledger)
    with ledger.engine.begin() as connection:
        command.downgrade(ledger_schema.alembic_config(connection), "0008")
    inspector = sa.inspect(ledger.engine)
    columns = {column["name"] for column in inspector.get_columns("sessions")}
    assert "node" not in columns and "image" in columns
    assert "nodes" not in inspector.get_table_names()
    with ledger.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM sessions")).scalar_one() == 1


# --- heartbeats ----------------------------------------------------------------


def test_a_heartbeat_adds_then_updates_the_node(ledger):
    assert beat(ledger) is None
    (node,) = ledger.nodes()
    assert node.name == "gpu-1" and node.agent_version == "1.0"
    assert node.gpus == (NodeGPU("GPU-a", 0, H100, 80 << 30), NodeGPU("GPU-b", 1, H100, 80 << 30))
    assert node.last_heartbeat_at == T0 and node.heartbeat_interval_s == 15.0
    assert not node.lost and node.deadline() == at(30)
    assert beat(ledger, seconds=15, gpus=GPUS[:1]) is None
    node = ledger.get_node("gpu-1")
    assert node.last_heartbeat_at == at(15) and len(node.gpus) == 1
    assert ledger.get_node("nowhere") is None


def test_a_heartbeat_keeps_what_is_wrong_with_a_gpu_until_it_is_fine(ledger):
    lost = [{**GPUS[0], "problem": "GPU is lost"}]
    beat(ledger, gpus=[*lost, GPUS[1]])
    (node,) = ledger.nodes()
    assert [(gpu.uuid, gpu.problem) for gpu in node.gpus] == [
        ("GPU-a", "GPU is lost"),
        ("GPU-b", ""),
    ]
    assert "problem" not in node.gpus[1].to_json()  # a healthy GPU's JSON is as before
    beat(ledger, seconds=15)
    assert [gpu.problem for gpu in ledger.get_node("gpu-1").gpus] == ["", ""]


def test_mark_and_clear_lost_and_a_heartbeat_clears_it(ledger):
    beat(ledger)
    assert ledger.mark_lost("gpu-1", at(40)) is True
    assert ledger.mark_lost("gpu-1", at(50)) is False  # the first time stays
    assert ledger.get_node("gpu-1").lost_at == at(40)
    assert ledger.clear_lost("gpu-1") is True and ledger.clear_lost("gpu-1") is False
    ledger.mark_lost("gpu-1", at(60))
    assert beat(ledger, seconds=70) == at(60)  # the agent learns it was lost
    assert ledger.get_node("gpu-1").lost_at is None


@pytest.mark.parametrize(
    "change, error",
    [
        (dict(name=""), "node '' is not allowed"),
        (dict(heartbeat_interval_s=0), "give seconds > 0"),
        (dict(agent_version="v" * 65), "at most 64 characters"),
        (dict(at=T0.replace(tzinfo=None)), "timezone-aware"),
    ],
)
def test_a_heartbeat_refuses_what_the_table_cannot_hold(ledger, change, error):
    values = dict(
        name="gpu-1",
        gpus=GPUS,
        agent_version="1.0",
        agent_started_at=T0,
        heartbeat_interval_s=15,
        at=T0,
    )
    values.update(change)
    with pytest.raises(ValueError, match=error):
        ledger.heartbeat(values.pop("name"), **values)


# --- the node sweep ------------------------------------------------------------


def test_the_sweep_ends_a_late_nodes_sessions_at_its_last_heartbeat(ledger):
    start(ledger, "c1", "gpu-1")
    start(ledger, "c2", "gpu-2")
    start(ledger, "c3", "")  # one host: never swept
    beat(ledger, "gpu-1", seconds=100)
    beat(ledger, "gpu-2", seconds=100)
    assert ledger.sweep_lost_nodes(at(130)) == {}  # exactly 2 intervals: not yet late
    beat(ledger, "gpu-2", seconds=125)
    assert ledger.sweep_lost_nodes(at(130.5)) == {"gpu-1": ["c1"]}
    one = ledger.get_session("c1")
    assert (one.ended_at, one.end_reason) == (at(100), NODE_LOST)
    assert NODE_LOST == sessions.REASON_NODE_LOST == "node lost"
    assert ledger.get_node("gpu-1").lost_at == at(130.5)
    assert ledger.get_session("c2").running and ledger.get_session("c3").running
    # billed up to the last heartbeat: 100 s at 3600 an hour
    assert one.charge(at(1000)) == 100
    assert ledger.sweep_lost_nodes(at(200)) == {"gpu-2": ["c2"]}
    assert ledger.sweep_lost_nodes(at(300)) == {}  # idempotent
    assert ledger.get_node("gpu-2").lost_at == at(200)


def test_a_session_opened_on_a_lost_node_is_ended_by_the_next_sweep(ledger):
    """An interrupted sweep, or a start event written late: the next sweep finishes it,
    never before the session's own start."""
    beat(ledger)
    ledger.mark_lost("gpu-1", at(40))
    start(ledger, "c1", started_at=at(50))
    assert ledger.sweep_lost_nodes(at(60)) == {"gpu-1": ["c1"]}
    assert ledger.get_session("c1").ended_at == at(50)


def test_a_node_back_before_the_close_keeps_its_sessions(ledger):
    beat(ledger)
    start(ledger)
    ledger.mark_lost("gpu-1", at(40))
    beat(ledger, seconds=41)  # back between the mark and the close
    assert ledger.node_store._close_lost("c1", "gpu-1", T0) is False
    assert ledger.get_session("c1").running


# --- reconcile ---------------------------------------------------------------


def test_a_surviving_session_reopens_as_one_session(ledger):
    start(ledger)
    beat(ledger)
    ledger.add_rollups([rollup(0)])
    ledger.sweep_lost_nodes(at(31))
    assert ledger.get_session("c1").end_reason == NODE_LOST
    assert ledger.reopen_lost_session("c1") is True
    again = ledger.get_session("c1")
    assert again.running and again.end_reason is None and again.started_at == T0
    assert ledger.reopen_lost_session("c1") is False  # running: nothing to undo
    with ledger.engine.connect() as connection:
        row = connection.execute(sa.text("SELECT * FROM sessions")).one()
    assert (row.charge_units, row.rollup_samples, row.rollups_until) == (None, None, None)
    assert ledger.close_session("c1", ended_at=at(500), reason="stopped")
    assert ledger.get_session("c1").charge(at(900)) == 500
    assert [s.container_id for s in ledger.sessions()] == ["c1"]


def test_only_a_node_lost_session_reopens(ledger):
    start(ledger)
    ledger.close_session("c1", ended_at=at(10), reason="stopped")
    assert ledger.reopen_lost_session("c1") is False
    assert ledger.reopen_lost_session("unknown") is False
    assert ledger.end_lost_session_earlier("c1", at(5), "exited with code 0") is False


def test_a_dead_containers_end_moves_back_to_dockers_never_forward(ledger):
    start(ledger)
    beat(ledger, seconds=100)
    ledger.sweep_lost_nodes(at(131))
    assert ledger.end_lost_session_earlier("c1", at(150), "exited with code 0") is False
    assert ledger.get_session("c1").ended_at == at(100)
    assert ledger.end_lost_session_earlier("c1", at(60), "exited with code 137") is True
    session = ledger.get_session("c1")
    assert (session.ended_at, session.end_reason) == (at(60), "exited with code 137")
    assert session.charge(at(900)) == 60
    # no longer "node lost": a later reconcile leaves it alone
    assert ledger.reopen_lost_session("c1") is False


def test_open_sessions_of_one_node(ledger):
    start(ledger, "c1", "gpu-1")
    start(ledger, "c2", "gpu-2")
    assert [s.container_id for s in ledger.open_sessions(node="gpu-2")] == ["c2"]
    assert len(ledger.open_sessions()) == 2
    with pytest.raises(ValueError, match="node 'n{256}' is not allowed"):
        start(ledger, "c3", "n" * 256)


# --- labels ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "found, env, expected",
    [
        ({labels.GPUS: "GPU-a,GPU-b"}, ["DOCKER_RESOURCE_NVIDIA-GPU=GPU-x"], ["GPU-a", "GPU-b"]),
        (
            {labels.GPUS: ""},
            ["PATH=/bin", "DOCKER_RESOURCE_NVIDIA-GPU=GPU-x,GPU-y"],
            ["GPU-x", "GPU-y"],
        ),
        ({}, {"DOCKER_RESOURCE_NVIDIA-GPU": "GPU-x"}, ["GPU-x"]),
        ({}, ["DOCKER_RESOURCE_NVIDIA-GPU="], []),
        (None, None, []),
    ],
)
def test_gpus_of_a_container_from_labels_or_swarms_env(found, env, expected):
    assert labels.gpus_of_container(found, env) == expected
    assert labels.GPU_COUNT == "jupyter-gpu-meter.gpu-count"


def test_lost_after_two_of_the_nodes_own_intervals(ledger):
    beat(ledger, interval=5)
    node = ledger.get_node("gpu-1")
    assert not node.late(at(10)) and node.late(at(10) + timedelta(microseconds=1))


def test_a_node_found_lost_without_sessions_is_reported_once(ledger):
    beat(ledger, "idle-node")
    assert ledger.sweep_lost_nodes(at(31)) == {"idle-node": []}
    assert ledger.sweep_lost_nodes(at(62)) == {}


def test_the_lost_sessions_of_a_node_among_the_containers_docker_has(ledger):
    for container_id, node in (("c1", "gpu-1"), ("c2", "gpu-1"), ("c3", "gpu-2")):
        start(ledger, container_id, node)
    beat(ledger, "gpu-1")
    beat(ledger, "gpu-2")
    ledger.sweep_lost_nodes(at(31))
    assert ledger.node_lost_sessions("gpu-1", []) == []
    found = ledger.node_lost_sessions("gpu-1", ["c1", "c3", "unknown"])
    assert [session.container_id for session in found] == ["c1"]
