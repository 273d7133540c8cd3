"""The node everywhere it matters: api/gpus, api/nodes, api/usage, api/users, the CSV,
/metrics and the admin page's "GPUs per node", in cluster mode and on one host.

The real web app (as in test_usage_web.py) over a real ledger that the agents'
own ledger calls filled: heartbeats of three nodes (one declared lost by the
hub's sweep), sessions tagged with their node, per-minute rollups of two
writers. The ledger's read (:func:`read_cluster`) runs on SQLite and PostgreSQL.
"""

import asyncio
import csv
import io
import re
import secrets
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import schemathesis
from schemathesis.checks import response_schema_conformance

from jupyter_gpu_meter.ledger import NODE_LOST, RollupRow
from jupyter_gpu_meter.ledger.node_views import read_cluster
from jupyter_gpu_meter.pricing import Pricing
from jupyter_gpu_meter.sampler import GPUReading, Tick
from jupyter_gpu_meter.service.reader import LiveState
from jupyter_gpu_meter.service.state import MeterState
from tests import test_agent, test_ledger
from tests.test_usage_web import DOCS, NOW, fetch, serve_app
from tests.test_usage_web import body as json_of

db_url = test_ledger.db_url
clock = test_ledger.clock
make_ledger = test_ledger.make_ledger
ledger = test_ledger.ledger
containers = test_agent.containers
make_meters = test_agent.make_meters

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
PRICING = Pricing(prices={H100: "2.49", A100: "1.50"}, currency="EUR")
SCHEMA = schemathesis.openapi.from_path(
    Path(__file__).resolve().parent.parent / "jupyter_gpu_meter/service/openapi.yaml"
)


def gpus(node, model, count):
    return [
        {"uuid": f"GPU-{node}-{i}", "index": i, "model": model, "memory_total_bytes": 80 << 30}
        for i in range(count)
    ]


def beat(ledger, node, model, count, at, interval=15.0):
    ledger.heartbeat(
        node,
        gpus=gpus(node, model, count),
        agent_version="1.0",
        agent_started_at=NOW - timedelta(hours=2),
        heartbeat_interval_s=interval,
        at=at,
    )


def start(ledger, container_id, user, node, uuids, model, started_at, server=""):
    assert ledger.open_session(
        container_id=container_id,
        user=user,
        server=server,
        gpu_uuids=uuids,
        gpu_model=model,
        profile=f"gpu-{len(uuids)}",
        price=PRICING.snapshot(model, len(uuids)),
        started_at=started_at,
        node=node,
    )


def fill(ledger):
    """Three nodes: gpu-1 (2 × H100) with ada's server on GPU 0, gpu-2 (2 × A100) with
    bob's on both, gpu-3 (2 × H100) lost since 10 minutes ago (carol's session ended)."""
    ledger.upgrade()
    beat(ledger, "gpu-1", H100, 2, NOW - timedelta(seconds=5))
    beat(ledger, "gpu-2", A100, 2, NOW - timedelta(seconds=40))  # late, not swept yet
    beat(ledger, "gpu-3", H100, 2, NOW - timedelta(minutes=10))
    start(ledger, "c-ada", "ada", "gpu-1", ["GPU-gpu-1-0"], H100, NOW - timedelta(hours=1), "t")
    start(
        ledger,
        "c-bob",
        "bob",
        "gpu-2",
        ["GPU-gpu-2-0", "GPU-gpu-2-1"],
        A100,
        NOW - timedelta(minutes=30),
    )
    start(ledger, "c-carol", "carol", "gpu-3", ["GPU-gpu-3-1"], H100, NOW - timedelta(hours=1))
    # the hub's sweep at NOW: gpu-3 is lost, carol's session ends at its last heartbeat
    # (gpu-2's last heartbeat is 40 s old, more than 2 × 15 s, but it is swept at NOW + 1 s)
    swept = ledger.sweep_lost_nodes(NOW - timedelta(seconds=45))
    assert list(swept) == ["gpu-3"]
    minute = NOW.replace(second=0, microsecond=0)
    ledger.add_rollups(
        [
            # ada's GPU: an old minute at 10 %, the latest at 80 % (one writer) and 40 %
            # (another: a restarted agent), merged sample-weighted: (80×30 + 40×10) / 40 = 70
            RollupRow(
                "c-ada",
                "GPU-gpu-1-0",
                minute - timedelta(minutes=5),
                "gpu-1-1-a",
                60,
                10.0,
                10,
                1 << 30,
            ),
            RollupRow("c-ada", "GPU-gpu-1-0", minute, "gpu-1-1-a", 30, 80.0, 90, 5 << 30),
            RollupRow("c-ada", "GPU-gpu-1-0", minute, "gpu-1-2-b", 10, 40.0, 50, 6 << 30),
            RollupRow("c-bob", "GPU-gpu-2-0", minute, "gpu-2-1-a", 60, 20.0, 30, 2 << 30),
        ]
    )
    return ledger


def test_the_cluster_read_is_nodes_open_sessions_and_each_held_gpus_latest_minute(ledger):
    fill(ledger)
    read = read_cluster(ledger.db)
    assert [node.name for node in read.nodes] == ["gpu-1", "gpu-2", "gpu-3"]
    assert [node.lost for node in read.nodes] == [False, False, True]
    assert [(s.user, s.node) for s in read.sessions] == [("ada", "gpu-1"), ("bob", "gpu-2")]
    ada = read.latest["GPU-gpu-1-0"]
    assert ada.minute == NOW.replace(second=0, microsecond=0)
    assert ada.samples == 40 and ada.utilization == pytest.approx(70.0)
    assert ada.memory_max_bytes == 6 << 30
    assert read.latest["GPU-gpu-2-0"].utilization == pytest.approx(20.0)
    assert "GPU-gpu-2-1" not in read.latest  # held, no rollup yet
    assert "GPU-gpu-3-1" not in read.latest  # its session ended with its node


def test_an_empty_cluster_reads_as_nothing(ledger):
    ledger.upgrade()
    read = read_cluster(ledger.db)
    assert read.nodes == () and read.sessions == () and read.latest == {}


@pytest.fixture
async def cluster(tmp_path):
    """The web app of a hub's meter in cluster mode (no sample, no Docker) on SQLite."""
    ledger = fill(test_ledger.Ledger(f"sqlite:///{tmp_path}/ledger.sqlite"))
    meter = cluster_meter(ledger, cluster=True)
    server, app = serve_app(meter)
    yield app
    server.stop()
    ledger.close()


def cluster_meter(ledger, *, cluster):
    state = MeterState()
    meter = SimpleNamespace(
        ledger=ledger,
        pricing=PRICING,
        state=state,
        health=lambda: {"gpu_sampling": "off", "pending_writes": 0, **state.health()},
        cluster=cluster,
    )
    meter.live = LiveState(state, health=meter.health)
    return meter


async def test_api_gpus_is_the_union_of_the_nodes_gpus_with_holders_and_utilization(cluster):
    gpus = json_of(await fetch(cluster, "api/gpus", "admin-token"))["gpus"]
    assert [(g["node"], g["index"]) for g in gpus] == [
        ("gpu-1", 0),
        ("gpu-1", 1),
        ("gpu-2", 0),
        ("gpu-2", 1),
        ("gpu-3", 0),
        ("gpu-3", 1),
    ]
    by_uuid = {g["uuid"]: g for g in gpus}
    ada = by_uuid["GPU-gpu-1-0"]
    assert ada["holder"] == {"user": "ada", "server": "t", "since": "2026-11-20T11:00:00Z"}
    assert ada["utilization"] == 70 and ada["utilization_text"] == "70%"
    assert ada["memory_used_bytes"] == 6 << 30 and ada["memory_text"] == "6.0 GiB / 80.0 GiB"
    assert ada["sampled_at"] == "2026-11-20T12:00:00Z" and ada["healthy"] is True
    free = by_uuid["GPU-gpu-1-1"]
    assert free["allocated"] is False and free["holder"] is None and free["utilization"] is None
    assert by_uuid["GPU-gpu-2-1"]["holder"]["user"] == "bob"
    lost = by_uuid["GPU-gpu-3-1"]
    assert lost["healthy"] is False and lost["allocated"] is False  # carol's session ended
    assert lost["problem"] == f"{NODE_LOST}: no heartbeat since 2026-11-20 11:50 UTC"


async def test_a_user_sees_the_readings_of_their_own_gpus_only(cluster):
    gpus = json_of(await fetch(cluster, "api/gpus", "ada-token"))["gpus"]
    by_uuid = {g["uuid"]: g for g in gpus}
    assert by_uuid["GPU-gpu-1-0"]["utilization"] == 70
    bob = by_uuid["GPU-gpu-2-0"]
    assert bob["allocated"] is True and bob["holder"] is None and bob["utilization"] is None


async def test_api_nodes_gives_each_node_its_heartbeat_gpus_and_holders(cluster):
    data = json_of(await fetch(cluster, "api/nodes", "auditor-token"))
    assert data["cluster"] is True and data["as_of"] == "2026-11-20T12:00:00Z"
    assert data["totals"] == {
        "nodes": 3,
        "lost": 1,
        "gpus_total": 6,
        "gpus_free": 1,
        "gpus_held": 3,
    }
    one, two, three = data["nodes"]
    assert (one["name"], one["models"], one["gpus_free"], one["gpus_held"]) == (
        "gpu-1",
        [H100],
        1,
        1,
    )
    assert one["sessions"] == [
        {"user": "ada", "server": "t", "gpus": 1, "since": "2026-11-20T11:00:00Z"}
    ]
    assert one["utilization"] == 70.0 and (one["lost"], one["late"]) == (False, False)
    assert one["last_heartbeat_at"] == "2026-11-20T11:59:55Z"
    assert two["late"] is True and two["lost"] is False and two["gpus_free"] == 0
    assert two["utilization_text"] == "20%"  # the mean of its held GPUs that have a minute
    assert three["lost"] is True and three["lost_at"] is not None
    assert three["gpus_free"] == 0 and three["sessions"] == []
    for token in ("ada-token", None):
        response = await fetch(cluster, "api/nodes", token, ok=False)
        assert response.code == 403 and json_of(response)["message"]
    await check_schema(cluster, "api/nodes", "admin-token")
    await check_schema(cluster, "api/gpus", "admin-token")
    await check_schema(cluster, "api/users", "admin-token")


async def test_one_host_has_no_nodes_and_an_empty_node_everywhere(app):
    data = json_of(await fetch(app, "api/nodes", "admin-token"))
    assert data["cluster"] is False and data["nodes"] == [] and data["totals"]["nodes"] == 0
    gpus = json_of(await fetch(app, "api/gpus", "admin-token"))["gpus"]
    assert {g["node"] for g in gpus} == {""}
    usage = json_of(await fetch(app, "api/usage", "ada-token"))
    assert {s["node"] for s in usage["sessions"]["items"] + usage["running"]} == {""}
    page = (await fetch(app, "admin", "admin-token")).body.decode()
    assert "GPUs per node" not in page and "gpu-meter-node" not in page
    text = (await fetch(app, "api/export.csv", "admin-token")).body.decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][-1] == "node" and {row[-1] for row in rows[1:]} == {""}


@pytest.fixture
async def app(tmp_path):
    """The same web app on one host: the ledger's sessions without node, no nodes."""
    ledger = test_ledger.Ledger(f"sqlite:///{tmp_path}/ledger.sqlite")
    ledger.upgrade()
    start(ledger, "c-ada", "ada", "", ["GPU-0"], H100, NOW - timedelta(hours=1))
    ledger.close_session("c-ada", ended_at=NOW - timedelta(minutes=5), reason="stopped")
    start(ledger, "c-ada2", "ada", "", ["GPU-1"], H100, NOW - timedelta(minutes=3), "x")
    meter = cluster_meter(ledger, cluster=False)
    meter.state.sampled(Tick(NOW, (GPUReading("GPU-0", 0, H100, 5, 0, 80 << 30),), (), 0.001))
    server, app = serve_app(meter)
    yield app
    server.stop()
    ledger.close()


async def test_sessions_carry_their_node_in_the_api_and_the_csv(cluster):
    usage = json_of(await fetch(cluster, "api/usage?user=carol", "admin-token"))
    (carol,) = usage["sessions"]["items"]
    assert carol["node"] == "gpu-3" and carol["end_reason"] == NODE_LOST
    (bob,) = json_of(await fetch(cluster, "api/usage", "bob-token"))["running"]
    assert bob["node"] == "gpu-2"
    users = json_of(await fetch(cluster, "api/users", "admin-token"))["users"]["items"]
    running = {row["user"]: row["running_sessions"] for row in users}
    assert running["ada"] == [{"server": "t", "node": "gpu-1"}] and running["carol"] == []
    text = (await fetch(cluster, "api/export.csv", "admin-token")).body.decode()
    lines = list(csv.DictReader(io.StringIO(text)))
    assert {(line["user"], line["node"]) for line in lines} == {
        ("ada", "gpu-1"),
        ("bob", "gpu-2"),
        ("carol", "gpu-3"),
    }


async def test_the_admin_page_shows_gpus_per_node_and_marks_the_lost_one(cluster):
    page = (await fetch(cluster, "admin", "admin-token")).body.decode()
    section = page[page.index('id="nodes"') : page.index('id="gpus-title"')]
    assert "GPUs per node" in section and "1 of 6 GPUs free on 3 nodes, 1 lost" in section
    rows = re.findall(r'<tr data-node="([^"]+)"([^>]*)>(.*?)</tr>', section, re.S)
    assert [name for name, _, _ in rows] == ["gpu-1", "gpu-2", "gpu-3"]
    (_, one_class, one), (_, two_class, two), (_, three_class, three) = rows
    assert "ada/t (1)" in one and "70%" in one and "table-" not in one_class
    assert "bob (2)" in two and "gpu-meter-node-late" in two and "table-warning" in two_class
    assert "gpu-meter-node-lost" in three and "table-danger" in three_class
    assert "nobody" in three
    # 6 or 800 GPUs: the page's script loads them from api/gpus, none is in the page
    assert 'id="gpus-table" data-deferred="1"' in page and "Loading the GPUs of 3 nodes" in page
    assert "GPU-gpu-1-0" not in page


async def test_metrics_label_gpus_and_sessions_with_their_node(cluster):
    text = (await fetch(cluster, "metrics", "prometheus-token")).body.decode()
    ada = f'index="0",model="{H100}",node="gpu-1",uuid="GPU-gpu-1-0"'
    assert f"jupyter_gpu_meter_gpu_utilization_ratio{{{ada}}} 0.7" in text
    assert f"jupyter_gpu_meter_gpu_allocated{{{ada}}} 1.0" in text
    assert f"jupyter_gpu_meter_gpu_memory_used_bytes{{{ada}}} 6.442450944e+09" in text
    lost = f'index="1",model="{H100}",node="gpu-3",uuid="GPU-gpu-3-1"'
    assert f"jupyter_gpu_meter_gpu_healthy{{{lost}}} 0.0" in text
    holder = 'node="gpu-2",server="",user="bob",uuid="GPU-gpu-2-1"'
    assert f"jupyter_gpu_meter_gpu_holder_info{{{holder}}} 1.0" in text
    for node, count in (("gpu-1", 1), ("gpu-2", 1), ("gpu-3", 0)):
        assert f'jupyter_gpu_meter_running_sessions{{node="{node}"}} {count}.0' in text
    assert 'jupyter_gpu_meter_node_lost{node="gpu-3"} 1.0' in text
    assert 'jupyter_gpu_meter_node_lost{node="gpu-1"} 0.0' in text
    beat = re.search(r'node_last_heartbeat_timestamp_seconds\{node="gpu-1"\} (\S+)', text)
    assert float(beat.group(1)) == (NOW - timedelta(seconds=5)).timestamp()
    assert not re.search(r"^jupyter_gpu_meter_sampler_tick_duration_seconds ", text, re.M)
    # every metric the docs and the shipped Grafana dashboard name is served in cluster mode
    # but the sampler's own (the hub samples nothing): one-host's are checked in test_usage_web
    served = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    for path in (DOCS / "grafana" / "gpu-meter-dashboard.json", DOCS / "reference" / "metrics.md"):
        named = set(re.findall(r"jupyter_gpu_meter_[a-z_]+", path.read_text()))
        assert named and named <= served, (path, named - served)


async def check_schema(app, path: str, token: str) -> None:
    """``GET path`` answers as the OpenAPI document says (schemathesis, as test_api_fuzz.py;
    called in a thread: the app runs on this test's event loop)."""
    case = SCHEMA[f"/{path}"]["GET"].Case()
    headers = {"Authorization": f"token {token}"}
    response = await asyncio.to_thread(case.call, base_url=cluster_base(app), headers=headers)
    assert response.status_code == 200
    case.validate_response(response, checks=[response_schema_conformance])


def cluster_base(app) -> str:
    return app.url.rstrip("/")


# --- with the real agent and the hub's real meter in cluster mode ---------------------------


async def test_what_a_real_agent_writes_shows_in_the_hubs_api_with_its_node(
    make_meters, containers
):
    """An agent meters a real container on "node-a" (simulated GPUs) into the ledger; the
    hub's MeterService in cluster mode serves api/gpus, api/nodes and /metrics from it."""
    make_agent, make_hub = make_meters
    hub_id = f"jgm-nodeviews-{secrets.token_hex(3)}"
    clock = test_agent.Clock()
    agent = make_agent("node-a", hub_id, clock)
    uuids = [gpu.uuid for gpu in agent.inventory_source.discover().gpus]
    containers(hub_id, user="ada", uuids=uuids[:1])
    await test_agent.start_agent(agent)
    await agent._open_sampler()
    await agent._tick()
    await agent._flush()
    meter = make_hub(clock)
    assert meter.cluster is True
    server, app = serve_app(meter)
    try:
        gpus = json_of(await fetch(app, "api/gpus", "admin-token"))["gpus"]
        assert [(g["node"], g["uuid"]) for g in gpus] == [("node-a", uuid) for uuid in uuids]
        held, free = gpus
        assert held["holder"]["user"] == "ada" and free["holder"] is None
        assert held["utilization"] is not None and held["sampled_at"] is not None
        data = json_of(await fetch(app, "api/nodes", "admin-token"))
        (node,) = data["nodes"]
        assert data["cluster"] is True and node["name"] == "node-a"
        assert (node["gpus_total"], node["gpus_held"], node["gpus_free"]) == (2, 1, 1)
        assert node["lost"] is False and node["sessions"][0]["user"] == "ada"
        text = (await fetch(app, "metrics", "prometheus-token")).body.decode()
        assert 'jupyter_gpu_meter_running_sessions{node="node-a"} 1.0' in text
        (running,) = json_of(await fetch(app, "api/usage?user=ada", "admin-token"))["running"]
        assert running["node"] == "node-a"
    finally:
        server.stop()


@pytest.mark.slow
async def test_the_admin_pages_script_loads_a_clusters_gpus_with_their_node(cluster):
    """In a browser (Debian's chromium, as test_e2e_pages.py): the page holds no GPU row,
    its script fills the table from api/gpus at once, each GPU with its node."""
    from tests.test_e2e_pages import CHROMIUM, CHROMIUM_ARGS

    def browse():  # Playwright's sync API, in a thread: the app runs on this test's loop
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                headers = {"Authorization": "token admin-token"}
                page = browser.new_context(extra_http_headers=headers).new_page()
                page.goto(cluster.url + "admin")
                row = page.locator('#gpus-table tr[data-uuid="GPU-gpu-2-0"]')
                row.wait_for(timeout=10_000)
                return row.inner_text(), page.inner_text("#nodes-table")
            finally:
                browser.close()

    row, nodes = await asyncio.to_thread(browse)
    assert "node gpu-2" in row and "bob" in row
    assert "gpu-3" in nodes and "lost" in nodes
