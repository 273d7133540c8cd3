"""``api/server-status`` over HTTP, without a hub: the real web app on a real SQLite ledger,
the meter's real state and policy runner (fed ticks as the sampler feeds them); only the
hub's answer to "whose token is this?" is injected (as in test_usage_web.py). Through a
real hub and from inside a real notebook container: test_e2e_server_status.py.
"""

from datetime import timedelta
from types import SimpleNamespace

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from jupyter_gpu_meter.budgets import budget_view
from jupyter_gpu_meter.ledger import Ledger
from jupyter_gpu_meter.pricing import Pricing
from jupyter_gpu_meter.sampler import GPUReading, Tick
from jupyter_gpu_meter.service.policy_runner import Policies, PolicyRunner
from jupyter_gpu_meter.service.reader import LiveState
from jupyter_gpu_meter.service.server_status import ServerStatus, StatusSource
from jupyter_gpu_meter.service.state import MeterState
from jupyter_gpu_meter.service.web import create_notebook_application, make_context
from jupyter_gpu_meter.sessions import ManagedContainer, Opening, SessionChanges
from tests.test_usage_web import (
    ACCESS,
    H100,
    NOW,
    PREFIX,
    FakeHubAPI,
    KnownTokens,
    add_session,
    body,
    fetch,
    serve_app,
)

HOUR = timedelta(hours=1)
STATUS = "api/server-status"


def running(ledger, pricing, user, server, start, gpus=1):
    """A session in the ledger and its container, as the meter's state holds it."""
    container_id = add_session(ledger, pricing, user, start, server=server, gpus=gpus)
    uuids = tuple(f"GPU-{user}-{i}" for i in range(gpus))
    price = pricing.snapshot(H100, gpus)
    return ManagedContainer(
        container_id, user, server, uuids, H100 if gpus else "", "", price, True, start, None, None
    )


def tick(at, utilization, memory_used=10 << 30):
    gpus = [
        GPUReading(f"GPU-{user}-{i}", n, H100, utilization, memory_used, 80 << 30)
        for n, (user, i) in enumerate([("ada", 0), ("ada", 1), ("bob", 0)])
    ]
    return Tick(at, tuple(gpus), (), 0.001)


@pytest.fixture
async def meter(tmp_path):
    """ada runs "train" (2 GPUs, 1 h) and "cpu" (no GPU); bob runs nothing."""
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.sqlite")
    ledger.upgrade()
    pricing = Pricing(prices={H100: "2.49"}, cpu_price="0.10", currency="EUR")
    add_session(ledger, pricing, "ada", NOW - 48 * HOUR, NOW - 46 * HOUR)  # 4.98 EUR spent
    state = MeterState()
    containers = [
        running(ledger, pricing, "ada", "train", NOW - HOUR, gpus=2),
        running(ledger, pricing, "ada", "cpu", NOW - 2 * HOUR, gpus=0),
    ]
    openings = tuple(Opening(c, c.started_at, c.price) for c in containers)
    state.apply(SessionChanges(opened=openings))
    state.sampled(tick(NOW, 37))
    policies = Policies(gpu_idle_timeout=3600, max_age=2 * 86400)
    runner = PolicyRunner(policies, state, None, None, None, lambda: NOW)
    yield SimpleNamespace(
        ledger=ledger,
        pricing=pricing,
        state=state,
        runner=runner,
        health=lambda: {"status": "ok", **state.health()},
        # as MeterService.budget_view, at the test's clock
        budget_view=lambda user: budget_view(ledger.user_budget_status(user, [], NOW), 0.8),
    )
    ledger.close()


@pytest.fixture
async def app(meter):
    server, app = serve_app(meter, status=StatusSource(meter.runner, meter.ledger))
    yield app
    server.stop()


async def test_a_user_gets_their_running_server_as_api_usage_and_api_gpus_have_it(app):
    status = body(await fetch(app, STATUS + "?server=train", "ada-token"))
    usage = body(await fetch(app, "api/usage", "ada-token"))
    (train,) = [s for s in usage["running"] if s["server"] == "train"]
    assert status["user"] == "ada" and status["server"] == "train" and status["running"]
    assert status["started_at"] == train["started_at"] == "2026-11-20T11:00:00Z"
    assert status["measured_at"] == "2026-11-20T12:00:00Z"
    # the money: the ledger's session at the meter's clock, formatted by the usage core
    assert status["currency"] == "EUR" == train["charge"]["currency"]
    assert status["cost_so_far_text"] == train["charge"]["text"] == "4.98 EUR"
    assert status["cost_so_far"] == "4.98"
    assert status["price_per_hour"] == "4.98" and status["price_per_hour_text"] == "4.98 EUR/h"
    assert float(status["price_per_hour"]) == float(train["price_per_hour"]["amount"])
    # the GPUs: the last sample's readings of this server's GPUs only
    gpus = body(await fetch(app, "api/gpus", "ada-token"))["gpus"]
    assert [g["uuid"] for g in status["gpus"]] == ["GPU-ada-0", "GPU-ada-1"]
    for mine in status["gpus"]:
        (row,) = [g for g in gpus if g["uuid"] == mine["uuid"]]
        assert mine["utilization_percent"] == row["utilization"] == 37
        assert mine["memory_used_bytes"] == row["memory_used_bytes"]
        assert mine["memory_total_bytes"] == 80 << 30 and mine["model"] == H100
    assert status["gpus_text"] == "2 × NVIDIA H100 80GB HBM3"
    assert status["utilization_text"] == "37%"
    assert status["memory_text"] == "20.0 GiB / 160.0 GiB"
    assert status["budget"] is None and status["image"] == ""
    # GPUs busy (37 % >= 5 %): no idle stop to come; the max age is 2 days
    assert [d["policy"] for d in status["deadlines"]] == ["max_age"]


async def test_a_cpu_only_server_has_no_gpu_and_the_default_server_is_the_empty_name(app):
    cpu = body(await fetch(app, STATUS + "?server=cpu", "ada-token"))
    assert cpu["gpus"] == [] and cpu["gpus_text"] == "no GPU"
    assert cpu["utilization_text"] == "–" and cpu["memory_text"] == ""
    assert cpu["price_per_hour_text"] == "0.10 EUR/h" and cpu["cost_so_far_text"] == "0.20 EUR"
    # no server given: the default server (""), which ada does not run
    missing = await fetch(app, STATUS, "ada-token", ok=False)
    assert missing.code == 404
    assert body(missing)["message"] == (
        "ada has no running server '' metered here (running: 'cpu', 'train'; "
        "the default server is '')"
    )


async def test_the_idle_and_max_age_deadlines_are_the_policies_own_and_warn_in_the_lead_time(
    meter, app
):
    # the sampler saw ada's GPUs idle since 55 min ago: the idle policy stops them in 5 min
    meter.runner.observe(tick(NOW - timedelta(minutes=55), 0))
    meter.runner.observe(tick(NOW, 0))
    status = body(await fetch(app, STATUS + "?server=train", "ada-token"))
    assert status["deadlines"] == [
        {
            "policy": "idle",
            "at": "2026-11-20T12:05:00Z",
            "in_seconds": 300,
            "warn": True,
            "text": "idle stop in 5 min",
        },
        {
            "policy": "max_age",
            "at": "2026-11-22T11:00:00Z",
            "in_seconds": 47 * 3600,
            "warn": False,
            "text": "max age stop in 1 d 23 h",
        },
    ]
    # busy again: no idle stop to come; a CPU-only server is never idle-stopped
    meter.runner.observe(tick(NOW, 90))
    status = body(await fetch(app, STATUS + "?server=train", "ada-token"))
    assert [d["policy"] for d in status["deadlines"]] == ["max_age"]
    cpu = body(await fetch(app, STATUS + "?server=cpu", "ada-token"))
    assert [d["policy"] for d in cpu["deadlines"]] == ["max_age"]


async def test_a_replaced_policy_or_a_dry_run_announces_no_deadline(meter):
    meter.runner.observe(tick(NOW - timedelta(minutes=55), 0))
    meter.runner.config.max_age_policy = lambda **kwargs: None  # an admin's own rule
    server, app = serve_app(meter, status=StatusSource(meter.runner, meter.ledger))
    status = body(await fetch(app, STATUS + "?server=train", "ada-token"))
    assert [d["policy"] for d in status["deadlines"]] == ["idle"]
    meter.runner.config.dry_run = True  # decided and recorded, never acted on
    status = body(await fetch(app, STATUS + "?server=train", "ada-token"))
    assert status["deadlines"] == []
    server.stop()


async def test_the_budget_left_runs_out_at_the_rate_of_all_the_users_servers(meter, app):
    meter.ledger.set_budget(
        scope="user", name="ada", amount="20", unit="money", currency="EUR", period="month",
        by="admin", at=NOW - 48 * HOUR,
    )  # fmt: skip
    status = body(await fetch(app, STATUS + "?server=train", "ada-token"))
    usage = body(await fetch(app, "api/usage", "ada-token"))
    # spent: 4.98 (done) + 4.98 (train, 1 h of 2 GPUs) + 0.20 (cpu, 2 h) = 10.16 of 20
    assert status["budget"]["left_text"] == usage["budget"]["left"]["text"] == "9.84 EUR"
    assert status["budget"]["left"] == "9.84" and status["budget"]["unit"] == "EUR"
    # both servers spend: 4.98 + 0.10 EUR per hour, 9.84 left: 6,973 s (1 h 56 min)
    assert status["budget"]["runs_out_in_seconds"] == 6973
    assert status["budget"]["runs_out_at"] == "2026-11-20T13:56:13.228346Z"
    (budget,) = [d for d in status["deadlines"] if d["policy"] == "budget"]
    # the budget policy stops the servers c.Budgets.grace (300 s) after it runs out
    assert budget["in_seconds"] == 6973 + 300 and budget["text"] == "budget stop in ~2 h 1 min"
    assert budget["warn"] is False


async def test_a_used_up_budget_stops_after_the_grace_since_the_meter_saw_it(meter, app):
    meter.ledger.set_budget(
        scope="user", name="ada", amount="5", unit="money", currency="EUR", period="month",
        by="admin", at=NOW - 48 * HOUR,
    )  # fmt: skip
    meter.runner.exhausted_since["ada"] = NOW - timedelta(minutes=2)
    status = body(await fetch(app, STATUS + "?server=train", "ada-token"))
    assert status["budget"]["left_text"] == "0.00 EUR"
    assert status["budget"]["runs_out_in_seconds"] == 0
    (budget,) = [d for d in status["deadlines"] if d["policy"] == "budget"]
    assert budget == {
        "policy": "budget",
        "at": "2026-11-20T12:03:00Z",
        "in_seconds": 180,
        "warn": True,
        "text": "budget stop in 3 min",
    }


async def test_the_budget_is_read_once_per_cache_period(meter):
    def set_budget(amount):
        meter.ledger.set_budget(
            scope="user", name="ada", amount=amount, unit="gpu-hours", period="month",
            by="admin", at=NOW - HOUR,
        )  # fmt: skip

    set_budget("10")
    for seconds, left in ((3600.0, "6.00"), (0.0, "96.00")):
        settings = ServerStatus(budget_cache_seconds=seconds)
        source = StatusSource(meter.runner, meter.ledger, settings=settings)
        server, app = serve_app(meter, status=source)
        first = body(await fetch(app, STATUS + "?server=train", "ada-token"))["budget"]
        assert first["left_text"] == "6.00 GPU-hours"  # 10 - 2 h of 1 GPU - 1 h of 2 GPUs
        set_budget("100")
        second = body(await fetch(app, STATUS + "?server=train", "ada-token"))["budget"]
        assert second["left"] == left, seconds
        set_budget("10")
        server.stop()


async def test_others_servers_only_for_admins_and_read_all_holders(app):
    refused = await fetch(app, STATUS + "?user=ada&server=train", "bob-token", ok=False)
    assert refused.code == 403
    assert "bob may see only their own usage" in body(refused)["message"]
    # bob's own: he runs nothing
    assert (await fetch(app, STATUS + "?server=train", "bob-token", ok=False)).code == 404
    for token in ("admin-token", "auditor-token"):
        seen = body(await fetch(app, STATUS + "?user=ada&server=train", token))
        assert seen["user"] == "ada" and seen["cost_so_far_text"] == "4.98 EUR"
    outsider = await fetch(app, STATUS, "outsider-token", ok=False)
    assert outsider.code == 403 and ACCESS in body(outsider)["message"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("server=a/b", "server='a/b' is not a server name: give one of your server's names"),
        ("server=" + "x" * 256, "at most 255 characters"),
        ("server=a%09b", "is not a server name"),
        ("server=a&server=b", "give server at most once"),
        ("user=ada&user=bob", "give user at most once"),
        ("servername=train", "unknown parameter(s) servername: api/server-status takes server"),
    ],
)
async def test_bad_parameters_are_refused_saying_what_is_allowed(app, query, message):
    response = await fetch(app, f"{STATUS}?{query}", "ada-token", ok=False)
    assert response.code == 400
    assert message in body(response)["message"]


async def test_a_server_the_ledger_has_no_session_for_is_priced_from_its_labels(meter, app):
    """The session's write is still queued (or the ledger refused it): Docker's start and
    the container's price labels."""
    pricing = meter.pricing
    container = ManagedContainer(
        "f" * 64, "bob", "", ("GPU-bob-0",), H100, "", pricing.snapshot(H100, 1),
        True, NOW - 2 * HOUR, None, None,
    )  # fmt: skip
    meter.state.apply(SessionChanges(opened=(Opening(container, NOW, container.price),)))
    status = body(await fetch(app, STATUS, "bob-token"))
    assert status["started_at"] == "2026-11-20T10:00:00Z"
    assert status["cost_so_far_text"] == "4.98 EUR"
    # a container without price labels: no money to show
    meter.state.running["f" * 64] = container.__class__(**{**container.__dict__, "price": None})
    status = body(await fetch(app, STATUS, "bob-token"))
    assert status["currency"] is None and status["cost_so_far_text"] == ""


async def test_the_notebooks_address_answers_server_status_and_health_only(meter):
    context = make_context(
        meter,
        PREFIX,
        hub_auth=KnownTokens.for_tests(access_scopes={ACCESS}),
        hub_api=FakeHubAPI(),
        clock=lambda: NOW,
        live=LiveState(meter.state, health=meter.health),
        status=StatusSource(meter.runner, meter.ledger),
    )
    sock, port = bind_unused_port()
    server = HTTPServer(create_notebook_application(meter, context))
    server.add_sockets([sock])
    app = SimpleNamespace(url=f"http://127.0.0.1:{port}{PREFIX}")
    assert body(await fetch(app, STATUS + "?server=train", "ada-token"))["user"] == "ada"
    assert body(await fetch(app, "api/health"))["status"] == "ok"
    for path in ("api/usage", "", "admin", "metrics", "oauth_callback"):
        refused = await fetch(app, path, "admin-token", ok=False)
        assert refused.code == 404, path
        assert "answers only api/server-status and api/health" in body(refused)["message"]
    server.stop()


async def test_a_ledger_that_cannot_be_read_is_a_503_that_says_so(meter, tmp_path):
    broken = Ledger(f"sqlite:///{tmp_path}/missing/ledger.sqlite")  # its folder does not exist
    server, app = serve_app(meter, status=StatusSource(meter.runner, broken))
    response = await fetch(app, STATUS + "?server=train", "ada-token", ok=False)
    assert response.code == 503
    assert body(response)["message"] == (
        "the meter cannot read its ledger now (OperationalError); try again"
    )
    server.stop()
