"""GPUCullArbiter against a real HTTP endpoint shaped like the meter's api/gpus."""

import json
from datetime import timedelta

import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from jupyter_gpu_meter.idle_culler import GPUCullArbiter, server_owner

ADA = {"name": "", "url": "/user/ada/"}
BOB = {"name": "big", "url": "/user/bob/big/"}
CYD = {"name": "", "url": "/user/cyd/"}


@pytest.fixture
async def meter():
    """A stand-in meter answering api/gpus with what a test puts in `rows`."""
    state = {"rows": [], "token": None, "service_model": {}}

    class GPUs(web.RequestHandler):
        def get(self):
            state["token"] = self.request.headers.get("Authorization")
            self.write(json.dumps({"gpus": state["rows"]}))

    class Service(web.RequestHandler):
        """The hub's GET /hub/api/services/gpu-meter, as a token with or without
        read:services sees it (without: no url)."""

        def get(self):
            self.write(
                json.dumps({"kind": "service", "name": "gpu-meter", **state["service_model"]})
            )

    sock, port = bind_unused_port()
    server = HTTPServer(
        web.Application(
            [
                ("/services/gpu-meter/api/gpus", GPUs),
                ("/hub/api/services/gpu-meter", Service),
            ]
        )
    )
    server.add_sockets([sock])
    state["base"] = f"http://127.0.0.1:{port}"
    state["url"] = f"http://127.0.0.1:{port}/services/gpu-meter/"
    yield state
    server.stop()


def gpu(user, server, utilization):
    holder = {"user": user, "server": server, "since": "2026-11-27T00:00:00Z"} if user else None
    return {
        "uuid": f"GPU-{user}",
        "utilization": utilization,
        "allocated": bool(user),
        "holder": holder,
    }


def test_server_owner_from_the_hub_server_model():
    assert server_owner(ADA) == ("ada", "")
    assert server_owner(BOB) == ("bob", "big")
    assert server_owner({"name": "", "url": "/user/ada%40example.org/"}) == ("ada@example.org", "")
    assert server_owner({"name": "", "url": "/elsewhere/"}) is None


async def test_busy_gpus_are_never_culled_idle_ones_after_the_gpu_limit(meter):
    meter["rows"] = [gpu("ada", "", 97), gpu("bob", "big", 0), gpu(None, None, 0)]
    arbiter = GPUCullArbiter(gpu_inactive_limit=60, meter_url=meter["url"], token="secret")
    long_ago = timedelta(hours=5)
    assert await arbiter(inactive=long_ago, inactive_limit=600, server=ADA) is False
    assert await arbiter(inactive=timedelta(seconds=59), inactive_limit=600, server=BOB) is False
    assert await arbiter(inactive=timedelta(seconds=60), inactive_limit=600, server=BOB) is True
    # no GPU: the culler's own limit
    assert await arbiter(inactive=timedelta(seconds=599), inactive_limit=600, server=CYD) is False
    assert await arbiter(inactive=timedelta(seconds=600), inactive_limit=600, server=CYD) is True
    assert meter["token"] == "token secret"


async def test_without_the_meter_the_classic_rule_applies():
    arbiter = GPUCullArbiter(gpu_inactive_limit=60, meter_url="http://127.0.0.1:1/", token="x")
    assert await arbiter(inactive=timedelta(hours=5), inactive_limit=600, server=ADA) is True
    assert await arbiter(inactive=timedelta(seconds=61), inactive_limit=600, server=ADA) is False


async def test_the_meter_is_found_through_the_hubs_api(meter, monkeypatch):
    monkeypatch.delenv("JUPYTER_GPU_METER_URL", raising=False)
    monkeypatch.setenv("JUPYTERHUB_API_URL", meter["base"] + "/hub/api")
    meter["service_model"] = {"url": meter["base"], "prefix": "/services/gpu-meter/"}
    meter["rows"] = [gpu("ada", "", 97)]
    arbiter = GPUCullArbiter(gpu_inactive_limit=60, token="secret")
    assert arbiter.meter_url is None
    assert await arbiter(inactive=timedelta(hours=5), inactive_limit=600, server=ADA) is False
    assert arbiter.meter_url == meter["url"]


async def test_without_read_services_the_culler_says_which_scope_and_culls_classically(
    meter, monkeypatch, caplog
):
    monkeypatch.delenv("JUPYTER_GPU_METER_URL", raising=False)
    monkeypatch.setenv("JUPYTERHUB_API_URL", meter["base"] + "/hub/api")
    arbiter = GPUCullArbiter(gpu_inactive_limit=60, token="secret")
    with pytest.raises(RuntimeError, match="read:services!service=gpu-meter"):
        await arbiter.find_meter()
    assert await arbiter(inactive=timedelta(hours=5), inactive_limit=600, server=ADA) is True
    assert "read:services!service=gpu-meter" in caplog.text


async def test_outside_the_hub_without_a_meter_url_it_says_what_to_set(monkeypatch):
    monkeypatch.delenv("JUPYTER_GPU_METER_URL", raising=False)
    monkeypatch.delenv("JUPYTERHUB_API_URL", raising=False)
    with pytest.raises(RuntimeError, match="set JUPYTER_GPU_METER_URL"):
        await GPUCullArbiter(token="x").find_meter()
