"""Every API endpoint fed input generated from the OpenAPI document (schemathesis).

No request may get a 5xx; every refusal is a 4xx with a JSON message; every
answer has the status, content type, headers and body the document
promises (so the document's formats and limits, e.g. the export's
Content-Disposition and health's error classes, are checked too). Input
that fits the document and input that does not are both generated; the
callers include users whose names are not ASCII or are hostile. The real web
app runs on a real SQLite ledger and the real Docker engine (snapshots of
the admin's home); only the hub's answer to "whose token is this?" is
injected, as in test_usage_web.py.
"""

import asyncio
import secrets
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from jupyter_gpu_meter import homes
from jupyter_gpu_meter.ledger import Ledger, StoragePeriod
from jupyter_gpu_meter.pricing import Pricing
from jupyter_gpu_meter.sampler import GPUReading, Tick
from jupyter_gpu_meter.service import create_application
from jupyter_gpu_meter.service.home_api import HomeService
from jupyter_gpu_meter.service.reader import LiveState
from jupyter_gpu_meter.service.ssh_push import KeyPusher
from jupyter_gpu_meter.service.state import MeterState
from jupyter_gpu_meter.sessions import ManagedContainer, Opening, SessionChanges
from tests.hub import IMAGE
from tests.test_usage_web import (
    ACCESS,
    HOSTILE,
    MODELS,
    PREFIX,
    FakeHubAPI,
    KnownTokens,
    add_session,
)

OPENAPI = Path(__file__).resolve().parent.parent / "jupyter_gpu_meter/service/openapi.yaml"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
MODEL = "NVIDIA H100 80GB HBM3"
schema = schemathesis.openapi.from_path(OPENAPI)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
TOKENS = {
    **MODELS,
    "hanako-token": {"kind": "user", "name": "花子", "scopes": [ACCESS]},
}


#: values at and beyond the edges of what the API takes, mixed into the generated queries:
#: times that overflow in UTC or a database, counts beyond a database's integers, names a
#: spreadsheet or a header would misread
EDGES = {
    "since": [
        "0001-01-01",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59.999999Z",
        "9999-12-31T23:59:59-01:00",
        "0000-01-01",
        "99999-01-01",
    ],
    "until": ["0001-01-02", "9999-12-31", "9999-12-31T23:59:59-14:00", "10000-01-01T00:00:00Z"],
    "offset": ["2147483647", "2147483648", str(10**30), "-1", "9" * 5000],
    "limit": ["1000", "1001", str(10**30), "-1"],
    "server": ["train", "", "a/b", "x" * 256, "\t", HOSTILE],
    "user": ["花子", HOSTILE, "=cmd|' /C calc'!A0", 'a"; filename=x.exe/../', "\t=1+1", "\r@1"],
}


@schema.hook
def flatmap_query(context, query):
    """Some generated queries get edge values for the arguments they have."""
    query = dict(query or {})
    edges = {name: st.sampled_from(values) for name, values in EDGES.items() if name in query}
    if not edges:
        return st.just(query)
    edged = st.fixed_dictionaries({}, optional=edges).map(lambda extra: {**query, **extra})
    return st.one_of(st.just(query), edged)


#: SSH keys at and beyond the edges of what api/ssh-keys takes, mixed into generated bodies
GOOD_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdIW6O9r1gFVE64aGqkWeUhD5hXFqSPUO9xVt8K2v3u"
SSH_KEYS = [
    GOOD_KEY + " ada@laptop",
    GOOD_KEY,
    f'command="sh -c id" {GOOD_KEY}',
    f"no-pty,no-port-forwarding {GOOD_KEY}",
    f"{GOOD_KEY}\n{GOOD_KEY}",
    f"{GOOD_KEY} {GOOD_KEY}",
    f"{GOOD_KEY} nul\x00",
    f"{GOOD_KEY} {HOSTILE}",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n",
    "ssh-rsa " + "A" * 20000,
    "ssh-ed25519 " + "\udcff",
    "ssh-ed25519 AAAA====",
]


@schema.hook
def flatmap_body(context, body):
    """Some generated bodies with a "key" get an edge key instead."""
    if not isinstance(body, dict) or "key" not in body:
        return st.just(body)
    return st.one_of(st.just(body), st.sampled_from(SSH_KEYS).map(lambda k: {**body, "key": k}))


class Tokens(KnownTokens):
    models = TOKENS


@pytest.fixture(scope="module")
def home_service(docker_client):
    """Homes and snapshots on the real Docker engine, under a unique name; admin has a home."""
    api = docker_client.api
    prefix = f"jgm-fuzz-{secrets.token_hex(4)}"
    settings = homes.HomeVolumes(name_template=prefix + "-{username}", helper_image=IMAGE)
    service = HomeService(api, settings, "hub-fuzz")
    home = service.home_of("admin")
    homes.ensure_home(
        api,
        home,
        user="admin",
        hub_id="hub-fuzz",
        owner="1000:100",
        image=IMAGE,
        mount_path="/home/jovyan",
    )
    yield service
    service.executor.shutdown(wait=True)
    for volume in api.volumes().get("Volumes") or []:
        if volume["Name"].startswith(prefix):
            api.remove_volume(volume["Name"], force=True)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, home_service):
    path = tmp_path_factory.mktemp("fuzz") / "ledger.sqlite"
    ledger = Ledger(f"sqlite:///{path}")
    ledger.upgrade()
    pricing = Pricing(prices={"NVIDIA H100 80GB HBM3": "2.49"}, currency="EUR")
    for user in ("ada", "花子", HOSTILE, "=cmd|' /C calc'!A0"):
        add_session(ledger, pricing, user, NOW - timedelta(days=2), NOW - timedelta(days=1))
    # homes and a snapshot, so storage fields are in the answers the schema is checked on
    volumes = [("ada", "home"), ("ada", "snapshot"), ("花子", "home")]
    ledger.add_storage_periods(
        [
            StoragePeriod(user, f"v{i}", kind, NOW - timedelta(days=2), NOW, 10**9, 1, "EUR")
            for i, (user, kind) in enumerate(volumes)
        ],
        NOW,
    )
    state = MeterState()
    # ada runs a server (api/server-status answers for it); the others have none
    running = add_session(ledger, pricing, "ada", NOW - timedelta(hours=1), server="train")
    price = pricing.snapshot(MODEL, 1)
    container = ManagedContainer(
        running, "ada", "train", ("GPU-A",), MODEL, "", price, True, NOW, None, None
    )
    state.apply(SessionChanges(opened=(Opening(container, NOW, price),)))
    state.sampled(Tick(NOW, (GPUReading("GPU-A", 0, MODEL, 40, 1 << 30, 80 << 30),), (), 0.001))
    meter = SimpleNamespace(
        ledger=ledger,
        pricing=pricing,
        health=lambda: {
            "status": "ok",
            "gpu_sampling": "off",
            "gpu_sampling_problem": "",
            **state.health(),
            "pending_writes": 0,
            "last_write_error": "",
        },
    )
    # the meter's own state, empty, and no GPUs found (GPU sampling off)
    live = LiveState(
        state,
        health=meter.health,
        inventory_source=SimpleNamespace(discover=lambda: SimpleNamespace(gpus=())),
    )
    hub_auth = Tokens.for_tests(access_scopes={ACCESS})
    loop = asyncio.new_event_loop()
    sock, port = bind_unused_port()
    ready = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        application = create_application(
            meter,
            PREFIX,
            hub_auth=hub_auth,
            hub_api=FakeHubAPI(),
            clock=lambda: NOW,
            live=live,
            homes=home_service,
            ssh=KeyPusher(home_service.api, ledger, "hub-fuzz"),
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
@pytest.mark.parametrize("token", ["admin-token", "ada-token", "hanako-token", "hostile-token"])
def test_no_input_makes_the_api_fail_and_every_refusal_says_why(case, base_url, token):
    response = case.call(base_url=base_url, headers={"Authorization": f"token {token}"})
    assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400 and case.path != "/metrics":
        try:
            message = response.json()["message"]
        except ValueError:
            raise AssertionError(
                f"{case.as_curl_command()} -> {response.status_code}: {response.text[:300]!r}"
            ) from None
        assert message, case.as_curl_command()
