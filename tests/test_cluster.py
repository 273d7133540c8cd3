"""The cluster's GPU arithmetic, against JSON captured from a real Swarm.

tests/data/cluster/*.json: ``docker node inspect`` and task JSON (``GET /tasks``,
trimmed to the fields read here) of a three-node swarm of Docker-in-Docker
nodes (engine 20.10.24, API 1.41): jgm-nodecfg-1 (manager, 2 × "NVIDIA H100
80GB HBM3"), jgm-nodecfg-2 (2 × "NVIDIA A100-SXM4-80GB"), jgm-nodecfg-3 (no
GPU), UUIDs from GPUInventory.simulated_host. Services were made with
``--generic-resource NVIDIA-GPU=N --constraint
'node.labels.jupyter-gpu-meter.gpu-model==<model>'``.

- ready.json: every node ready and active; a 2-GPU H100 task running on node 1,
  a 1-GPU A100 task on node 2, a CPU task on node 3, a 1-GPU H100 task pending
  ("insufficient resources").
- drained-and-down.json: then node 2 drained (its task shut down) and node 3
  killed (down; its task still "running" as the manager last heard).
- gpu-node-down.json: node 2 active again, a new A100 task on it, then node 2
  killed too (down, its task rejected).
"""

import json
from pathlib import Path

import pytest

from jupyter_gpu_meter.cluster import (
    ClusterGPU,
    assigned_uuids,
    cluster_gpus,
    free_by_model,
    free_on_nodes,
    no_free_message,
    node_gpu_uuids,
    node_hostnames,
    node_state,
    placement_constraint,
    refusal,
    schedulable,
    task_gpu_uuids,
    unavailable_note,
)
from jupyter_gpu_meter.gpus import parse_simulated

DATA = Path(__file__).parent / "data" / "cluster"
H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
H100_UUIDS = [g.uuid for g in parse_simulated(f"2x{H100}", "jgm-nodecfg-1")]
A100_UUIDS = [g.uuid for g in parse_simulated(f"2x{A100}", "jgm-nodecfg-2")]


def load(name):
    data = json.loads((DATA / f"{name}.json").read_text())
    return data["nodes"], data["tasks"]


def test_the_captured_uuids_are_simulated_host_uuids():
    """The nodes advertised GPUInventory(simulated_host=<node name>)'s UUIDs."""
    nodes, _ = load("ready")
    assert [node_gpu_uuids(n) for n in nodes] == [H100_UUIDS, A100_UUIDS, []]


def test_all_nodes_ready():
    nodes, tasks = load("ready")
    gpus = cluster_gpus(nodes)
    assert gpus == [ClusterGPU("jgm-nodecfg-1", u, H100) for u in H100_UUIDS] + [
        ClusterGPU("jgm-nodecfg-2", u, A100) for u in A100_UUIDS
    ]
    # the 2-GPU H100 task and the A100 task hold GPUs; the pending one and the CPU one none
    assert assigned_uuids(tasks) == {*H100_UUIDS, A100_UUIDS[0]}
    assert free_by_model(gpus, assigned_uuids(tasks)) == {H100: (0, 2, 1), A100: (1, 2, 1)}
    assert free_on_nodes(gpus, assigned_uuids(tasks)) == {"jgm-nodecfg-1": 0, "jgm-nodecfg-2": 1}
    assert refusal(nodes, tasks, 1, H100) == "no free NVIDIA H100 80GB HBM3: 0 of 2 free on 1 node"
    assert refusal(nodes, tasks, 1, A100) == ""
    assert refusal(nodes, tasks, 1) == ""
    assert refusal(nodes, tasks, 2) == (
        "not enough free GPU on one node: 2 requested, 1 of 4 free on 2 nodes "
        "(at most 1 on one node)"
    )
    assert refusal(nodes, tasks, 0, H100) == ""


def test_the_pending_task_holds_nothing_and_says_why():
    _, tasks = load("ready")
    pending = [t for t in tasks if t["Status"]["State"] == "pending"]
    assert len(pending) == 1
    assert "NodeID" not in pending[0] and task_gpu_uuids(pending[0]) == []
    assert "insufficient resources" in pending[0]["Status"]["Err"]
    assert pending[0]["Spec"]["Placement"]["Constraints"] == [placement_constraint(H100)]


def test_a_running_task_has_its_node_and_gpus():
    nodes, tasks = load("ready")
    names = node_hostnames(nodes)
    placed = {
        names[t["NodeID"]]: task_gpu_uuids(t) for t in tasks if t["Status"]["State"] == "running"
    }
    assert placed == {
        "jgm-nodecfg-1": H100_UUIDS,
        "jgm-nodecfg-2": A100_UUIDS[:1],
        "jgm-nodecfg-3": [],
    }


def test_a_drained_node_and_a_down_node_offer_nothing():
    nodes, tasks = load("drained-and-down")
    states = {
        n["Description"]["Hostname"]: (n["Status"]["State"], n["Spec"]["Availability"])
        for n in nodes
    }
    assert states == {
        "jgm-nodecfg-1": ("ready", "active"),
        "jgm-nodecfg-2": ("ready", "drain"),
        "jgm-nodecfg-3": ("down", "active"),
    }
    assert [schedulable(n) for n in nodes] == [True, False, False]
    gpus = cluster_gpus(nodes)
    assert {g.node for g in gpus} == {"jgm-nodecfg-1"}
    assert free_by_model(gpus, assigned_uuids(tasks)) == {H100: (0, 2, 1)}
    # the drained node's task was shut down: it holds nothing
    shut = [t for t in tasks if t["Status"]["State"] == "shutdown"]
    assert task_gpu_uuids(shut[0]) == A100_UUIDS[:1]
    assert A100_UUIDS[0] not in assigned_uuids(tasks)


def test_a_down_gpu_node_offers_nothing():
    nodes, tasks = load("gpu-node-down")
    assert [n["Status"]["State"] for n in nodes] == ["ready", "down", "down"]
    assert free_by_model(cluster_gpus(nodes), assigned_uuids(tasks)) == {H100: (0, 2, 1)}
    rejected = [t for t in tasks if t["Status"]["State"] == "rejected"]
    assert rejected and not assigned_uuids(rejected)


def test_a_task_being_shut_down_holds_its_gpus_until_it_stops():
    task = {
        "Status": {"State": "running"},
        "DesiredState": "shutdown",
        "GenericResources": [{"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-a"}}],
    }
    assert assigned_uuids([task]) == {"GPU-a"}
    assert assigned_uuids([{**task, "Status": {"State": "complete"}}]) == set()


def test_the_api_reference_field_name_and_other_kinds():
    task = {
        "Status": {"State": "starting"},
        "AssignedGenericResources": [
            {"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-b"}},
            {"NamedResourceSpec": {"Kind": "FPGA", "Value": "fpga-0"}},
            {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 1}},
        ],
    }
    assert assigned_uuids([task]) == {"GPU-b"}


def test_a_gpu_node_without_its_model_label():
    nodes, _ = load("ready")
    unlabelled = {**nodes[0], "Spec": {**nodes[0]["Spec"], "Labels": {}}}
    assert {g.model for g in cluster_gpus([unlabelled])} == {""}
    assert refusal([unlabelled], [], 1) == ""
    assert refusal([unlabelled], [], 1, H100).startswith("no free NVIDIA H100 80GB HBM3: 0 of 0")


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((H100, 0, 4, 2), {}, "no free NVIDIA H100 80GB HBM3: 0 of 4 free on 2 nodes"),
        ((None, 0, 1, 1), {}, "no free GPU: 0 of 1 free on 1 node"),
        ((A100, 0, 2, 1), {"requested": 2}, "no free NVIDIA A100-SXM4-80GB: 0 of 2 free on 1 node"),
        (
            (H100, 3, 8, 2),
            {"requested": 4, "most": 2},
            "not enough free NVIDIA H100 80GB HBM3 on one node: 4 requested, "
            "3 of 8 free on 2 nodes (at most 2 on one node)",
        ),
    ],
)
def test_no_free_message_keeps_the_one_host_wording(args, kwargs, message):
    assert no_free_message(*args, **kwargs) == message


def test_one_host_and_cluster_say_it_the_same_way():
    from jupyter_gpu_meter.allocation import NoFreeGPUs

    one_host = str(NoFreeGPUs(requested=1, model=H100, total=4, free=0, unhealthy=0))
    assert no_free_message(H100, 0, 4, 2).startswith(one_host + " on ")


def test_placement_constraint_with_spaces():
    # verified on the real swarm: the value's spaces need no quoting
    assert (
        placement_constraint(H100)
        == "node.labels.jupyter-gpu-meter.gpu-model==NVIDIA H100 80GB HBM3"
    )


def test_the_gpus_of_nodes_that_take_no_task_are_known_and_never_free():
    nodes, tasks = load("drained-and-down")
    every = cluster_gpus(nodes, every_node=True)
    assert [(g.node, g.node_state) for g in every] == [
        ("jgm-nodecfg-1", "ready"),
        ("jgm-nodecfg-1", "ready"),
        ("jgm-nodecfg-2", "drain"),
        ("jgm-nodecfg-2", "drain"),
    ]
    assert [g.available for g in every] == [True, True, False, False]
    assert [node_state(n) for n in nodes] == ["ready", "drain", "down"]
    assert free_by_model(every, assigned_uuids(tasks)) == {H100: (0, 2, 1), A100: (0, 2, 1)}
    assert free_on_nodes(every, set(), A100) == {"jgm-nodecfg-2": 0}
    assert unavailable_note(every, A100) == " (jgm-nodecfg-2 is drained)"
    assert unavailable_note(every, H100) == ""
    # refused as the one-host message counted across the cluster, naming the node
    assert refusal(nodes, tasks, 1, A100) == (
        "no free NVIDIA A100-SXM4-80GB: 0 of 2 free on 1 node (jgm-nodecfg-2 is drained)"
    )


def test_a_down_gpu_node_is_named_in_the_refusal():
    nodes, tasks = load("gpu-node-down")
    every = cluster_gpus(nodes, every_node=True)
    assert {g.node: g.node_state for g in every} == {
        "jgm-nodecfg-1": "ready",
        "jgm-nodecfg-2": "down",
    }
    assert refusal(nodes, tasks, 1, A100) == (
        "no free NVIDIA A100-SXM4-80GB: 0 of 2 free on 1 node (jgm-nodecfg-2 is down)"
    )
    assert refusal(nodes, tasks, 1) == (
        "no free GPU: 0 of 4 free on 2 nodes (jgm-nodecfg-2 is down)"
    )


def test_a_node_that_rejoined_lists_its_gpus_once():
    nodes, _ = load("ready")
    gone = json.loads(json.dumps(nodes[1]))  # the same engine's old node entry, down
    gone["ID"], gone["Status"]["State"] = "old-id", "down"
    every = cluster_gpus([*nodes, gone], every_node=True)
    assert [g.uuid for g in every] == H100_UUIDS + A100_UUIDS
    assert all(g.available for g in every)
