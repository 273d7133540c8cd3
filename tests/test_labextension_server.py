"""The JupyterLab extension's server side: ``GET <base_url>gpu-meter/status``.

Against a small real HTTP server in the test that answers the meter's
``api/server-status`` in the shape the meter has (spec of issue #13) — the
meter at the network level — and against no meter at all. The last test runs
a real ``jupyter server`` with the extension and many clients at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tornado import httpserver, web
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

LABEXT = Path(__file__).resolve().parent.parent / "docker" / "labextension"
sys.path.insert(0, str(LABEXT))

from jupyterlab_gpu_meter.status import (  # noqa: E402
    GPUMeterStatus,
    StatusCache,
    fetch_status,
)

from tests.hub import free_ports  # noqa: E402

TOKEN = "notebook-server-token-123"  # noqa: S105
PREFIX = "/services/gpu-meter/"
#: what the meter answers for ada's server "train" (the spec's shape)
STATUS = {
    "user": "ada",
    "server": "train",
    "running": True,
    "started_at": "2026-11-30T14:00:00Z",
    "measured_at": "2026-11-30T14:05:00Z",
    "image": "PyTorch 2.9 / CUDA 12.8",
    "gpus": [
        {
            "index": 0,
            "uuid": "GPU-0",
            "model": "NVIDIA H100 80GB HBM3",
            "utilization_percent": 37,
            "memory_used_bytes": 1288490188,
            "memory_total_bytes": 85899345920,
        }
    ],
    "gpus_text": "1 × NVIDIA H100 80GB HBM3",
    "utilization_text": "37 %",
    "memory_text": "1.2 / 80 GB",
    "currency": "USD",
    "price_per_hour": "7.20",
    "price_per_hour_text": "7.20 USD/h",
    "cost_so_far": "1.23",
    "cost_so_far_text": "1.23 USD",
    "budget": {"left": "4.00", "left_text": "4.00 USD", "runs_out_at": None},
    "deadlines": [
        {
            "policy": "idle",
            "at": "2026-11-30T14:14:00Z",
            "in_seconds": 540,
            "warn": True,
            "text": "idle stop in 9 min",
        }
    ],
}


class StandInMeter:
    """An HTTP server answering ``api/server-status`` as the meter does; what it
    answers (`code`, `body`) and whether it answers at all (`hold`) are set by tests."""

    def __init__(self):
        self.calls: list[dict] = []
        self.code = 200
        self.body: bytes = json.dumps(STATUS).encode()
        self.hold: asyncio.Event | None = None  # set: answer only once it is set
        self.called = asyncio.Event()  # set at the first call
        meter = self

        class Handler(web.RequestHandler):
            async def get(self):
                meter.calls.append(
                    {
                        "authorization": self.request.headers.get("Authorization"),
                        "arguments": {
                            k: self.get_query_arguments(k) for k in self.request.query_arguments
                        },
                    }
                )
                meter.called.set()
                if meter.hold is not None:
                    await meter.hold.wait()
                self.set_status(meter.code)
                self.finish(meter.body)

        sock, self.port = bind_unused_port()
        self.server = httpserver.HTTPServer(
            web.Application([(PREFIX + "api/server-status", Handler)])
        )
        self.server.add_sockets([sock])
        self.url = f"http://127.0.0.1:{self.port}{PREFIX}"


@pytest.fixture
async def meter():
    stand_in = StandInMeter()
    yield stand_in
    if stand_in.hold is not None:
        stand_in.hold.set()
    stand_in.server.stop()
    await stand_in.server.close_all_connections()


def closed_port_url() -> str:
    """A URL where nothing listens (a port bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{PREFIX}"


def settings(url: str, **extra) -> GPUMeterStatus:
    given = {"api_token": TOKEN, "server_name": "train", "request_timeout": 2, **extra}
    return GPUMeterStatus(meter_api_url=url, **given)


async def test_passes_the_meters_answer_on_with_the_servers_token_and_name(meter):
    answer = await fetch_status(settings(meter.url), AsyncHTTPClient())
    assert answer == {**STATUS, "available": True}
    assert meter.calls == [{"authorization": f"token {TOKEN}", "arguments": {"server": ["train"]}}]


async def test_the_default_server_asks_for_server_empty(meter):
    await fetch_status(settings(meter.url, server_name=""), AsyncHTTPClient())
    assert meter.calls[0]["arguments"] == {"server": [""]}


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("JUPYTER_GPU_METER_API_URL", "http://172.18.0.1:10101/services/gpu-meter/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", TOKEN)
    monkeypatch.setenv("JUPYTERHUB_SERVER_NAME", "train")
    found = GPUMeterStatus()
    assert found.meter_api_url == "http://172.18.0.1:10101/services/gpu-meter/"
    assert (found.api_token, found.server_name) == (TOKEN, "train")


@pytest.mark.parametrize("url", ["ftp://meter/", "http://meter/services/gpu-meter", "meter/"])
def test_a_meter_url_that_is_not_http_or_lacks_the_slash_is_refused(url):
    with pytest.raises(ValueError, match="give an http\\(s\\) URL ending in '/'"):
        GPUMeterStatus(meter_api_url=url)


async def test_no_meter_url_is_unavailable_without_a_call():
    answer = await fetch_status(GPUMeterStatus(meter_api_url="", api_token=TOKEN), None)
    assert answer["available"] is False
    assert "$JUPYTER_GPU_METER_API_URL is not set" in answer["reason"]


async def test_no_token_is_unavailable_without_a_call(meter):
    answer = await fetch_status(settings(meter.url, api_token=""), AsyncHTTPClient())
    assert answer == {
        "available": False,
        "reason": "no token to ask the meter with: $JUPYTERHUB_API_TOKEN is not set",
    }
    assert meter.calls == []


async def test_a_meter_that_is_down_is_unavailable():
    answer = await fetch_status(settings(closed_port_url()), AsyncHTTPClient())
    assert answer["available"] is False
    assert answer["reason"].startswith("cannot reach the meter at http://127.0.0.1:")


async def test_a_meter_that_does_not_answer_in_time_is_unavailable(meter):
    meter.hold = asyncio.Event()  # never set while the request waits
    answer = await fetch_status(settings(meter.url, request_timeout=0.2), AsyncHTTPClient())
    assert answer["available"] is False
    assert answer["reason"].startswith("the meter did not answer: ")
    assert "Timeout" in answer["reason"]


async def test_a_refusal_gives_the_meters_own_message(meter):
    meter.code = 404
    meter.body = json.dumps(
        {"status": 404, "message": "ada has no running server 'train' metered here"}
    ).encode()
    answer = await fetch_status(settings(meter.url), AsyncHTTPClient())
    assert answer == {
        "available": False,
        "reason": "the meter answered 404: ada has no running server 'train' metered here",
    }


@pytest.mark.parametrize("body", [b"<html>Bad Gateway</html>", b'["not", "an object"]'])
async def test_an_error_without_a_json_message_gives_the_code(meter, body):
    meter.code, meter.body = 502, body
    answer = await fetch_status(settings(meter.url), AsyncHTTPClient())
    assert answer == {"available": False, "reason": "the meter answered 502"}


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
async def test_an_answer_that_is_not_a_json_object_is_unavailable(meter, body):
    meter.body = body
    answer = await fetch_status(settings(meter.url), AsyncHTTPClient())
    assert answer == {"available": False, "reason": "the meter's answer is not a JSON object"}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_cache_asks_once_per_period_however_many_ask(meter):
    clock = Clock()
    client = AsyncHTTPClient()
    cache = StatusCache(lambda: fetch_status(settings(meter.url), client), 5.0, clock)
    answers = await asyncio.gather(*(cache.get() for _ in range(25)))
    assert len(meter.calls) == 1
    assert all(a == {**STATUS, "available": True} for a in answers)
    clock.now += 4.9
    await cache.get()
    assert len(meter.calls) == 1
    clock.now += 0.1
    await cache.get()
    assert len(meter.calls) == 2
    assert cache.fetches == 2


async def test_a_failure_is_cached_too():
    clock = Clock()
    client = AsyncHTTPClient()
    cache = StatusCache(lambda: fetch_status(settings(closed_port_url()), client), 5.0, clock)
    first = await cache.get()
    second = await cache.get()
    assert first is second and first["available"] is False
    assert cache.fetches == 1


async def test_callers_during_a_fetch_share_it(meter):
    meter.hold = asyncio.Event()
    client = AsyncHTTPClient()
    cache = StatusCache(lambda: fetch_status(settings(meter.url), client), 5.0, Clock())
    waiting = [asyncio.ensure_future(cache.get()) for _ in range(10)]
    await meter.called.wait()  # the first call reached the meter
    meter.hold.set()
    answers = await asyncio.gather(*waiting)
    assert len(meter.calls) == 1 and cache.fetches == 1
    assert {a["cost_so_far_text"] for a in answers} == {"1.23 USD"}


# -- a real Jupyter server with the extension ---------------------------------


def free_port() -> int:
    return free_ports(1)[0]  # this xdist worker's own, as the hubs' ports


async def wait_for_server(client, url: str, process, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        assert process.returncode is None, "jupyter server exited"
        try:
            response = await client.fetch(url, raise_error=False, request_timeout=2)
            if response.code == 200:
                return
        except OSError:
            pass
        assert asyncio.get_running_loop().time() < deadline, f"no answer at {url}"
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_a_jupyter_server_with_the_extension_serves_status(meter, tmp_path):
    port, server_token = free_port(), "lab-token-456"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(LABEXT), os.environ.get("PYTHONPATH", "")]),
        "JUPYTER_GPU_METER_API_URL": meter.url,
        "JUPYTERHUB_API_TOKEN": TOKEN,
        "JUPYTERHUB_SERVER_NAME": "train",
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jupyter_server",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={server_token}",
        "--ServerApp.open_browser=False",
        "--ServerApp.allow_root=True",
        "--ServerApp.base_url=/user/ada/train/",
        "--ServerApp.jpserver_extensions={'jupyterlab_gpu_meter': True}",
        "--GPUMeterStatus.cache_seconds=60",
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    client = AsyncHTTPClient()
    base = f"http://127.0.0.1:{port}/user/ada/train/"
    try:
        await wait_for_server(client, f"{base}api/status?token={server_token}", process)
        status = f"{base}gpu-meter/status"
        headers = {"Authorization": f"token {server_token}"}
        responses = await asyncio.gather(
            *(client.fetch(status, headers=headers) for _ in range(20))
        )
        assert {r.code for r in responses} == {200}
        assert all(json.loads(r.body) == {**STATUS, "available": True} for r in responses)
        assert len(meter.calls) == 1  # 20 tabs at once, one meter call
        assert meter.calls[0]["authorization"] == f"token {TOKEN}"
        refused = await client.fetch(status, raise_error=False)
        assert refused.code == 403  # the server's own auth guards it
    finally:
        process.terminate()
        output = (await asyncio.wait_for(process.communicate(), 30))[0].decode(errors="replace")
    assert "jupyterlab_gpu_meter: /user/ada/train/gpu-meter/status asks" in output, output


def test_the_reference_names_every_setting():
    text = (LABEXT.parent.parent / "docs" / "reference" / "labextension.md").read_text()
    for name in GPUMeterStatus.class_trait_names(config=True):
        assert f"`GPUMeterStatus.{name}`" in text, name
    schema = json.loads((LABEXT / "schema" / "status.json").read_text())
    for name in schema["properties"]:
        assert f"`{name}`" in text, name
