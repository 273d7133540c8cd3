"""Every API endpoint fed input generated from the OpenAPI document (schemathesis).

No request may get a 5xx; every refusal is a 4xx with a JSON message. The
real web app runs on a real SQLite ledger; only the hub's answer to "whose
token is this?" is injected, as in test_usage_web.py.
"""

import asyncio
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from jupyter_gpu_meter.ledger import Ledger
from jupyter_gpu_meter.pricing import Pricing
from jupyter_gpu_meter.service import create_application
from jupyter_gpu_meter.service.reader import LiveState
from jupyter_gpu_meter.service.state import MeterState
from tests.test_usage_web import ACCESS, PREFIX, FakeHubAPI, KnownTokens, add_session

OPENAPI = Path(__file__).resolve().parent.parent / "jupyter_gpu_meter/service/openapi.yaml"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
schema = schemathesis.openapi.from_path(OPENAPI)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "ledger.sqlite"
    ledger = Ledger(f"sqlite:///{path}")
    ledger.upgrade()
    pricing = Pricing(prices={"NVIDIA H100 80GB HBM3": "2.49"}, currency="EUR")
    add_session(ledger, pricing, "ada", NOW - timedelta(days=2), NOW - timedelta(days=1))
    meter = SimpleNamespace(
        ledger=ledger,
        pricing=pricing,
        health=lambda: {"gpu_sampling": "off", "pending_writes": 0},
    )
    # the meter's own state, empty, and no GPUs found (GPU sampling off)
    live = LiveState(
        MeterState(),
        health=meter.health,
        inventory_source=SimpleNamespace(discover=lambda: SimpleNamespace(gpus=())),
    )
    hub_auth = KnownTokens(
        api_token="service-token",
        oauth_client_id="service-gpu-meter",
        api_url="http://127.0.0.1:9/hub/api",
        hub_prefix="/hub/",
        base_url=PREFIX,
        access_scopes={ACCESS},
    )
    loop = asyncio.new_event_loop()
    sock, port = bind_unused_port()
    ready = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        application = create_application(
            meter, PREFIX, hub_auth=hub_auth, hub_api=FakeHubAPI(), clock=lambda: NOW, live=live
        )
        HTTPServer(application).add_sockets([sock])
        loop.call_soon(ready.set)
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{port}/services/gpu-meter"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    ledger.close()


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.parametrize("token", ["admin-token", "ada-token"])
def test_no_input_makes_the_api_fail_and_every_refusal_says_why(case, base_url, token):
    response = case.call(base_url=base_url, headers={"Authorization": f"token {token}"})
    assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
    if response.status_code >= 400 and case.path != "/metrics":
        try:
            message = response.json()["message"]
        except ValueError:
            raise AssertionError(
                f"{case.as_curl_command()} -> {response.status_code}: {response.text[:300]!r}"
            ) from None
        assert message, case.as_curl_command()
