"""The SSH client's wheel: built in memory, served by the meter's real web app, and
installed by pip from that URL into a fresh virtual environment."""

import asyncio
import base64
import hashlib
import io
import subprocess
import sys
import zipfile

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from jupyter_gpu_meter import __version__, ssh_proxy
from jupyter_gpu_meter.ssh_wheel import build_wheel, client_wheel
from tests.test_usage_web import meter, serve_app  # noqa: F401 (meter is a fixture)

FILENAME = f"jupyter_gpu_meter_ssh-{__version__}-py3-none-any.whl"


def test_the_wheel_holds_the_module_and_a_true_record():
    filename, data = client_wheel()
    assert filename == FILENAME
    assert build_wheel() == data  # the same bytes at every build
    archive = zipfile.ZipFile(io.BytesIO(data))
    info = f"jupyter_gpu_meter_ssh-{__version__}.dist-info"
    assert archive.read("jupyter_gpu_meter_ssh.py") == open(ssh_proxy.__file__, "rb").read()
    assert b"Name: jupyter-gpu-meter-ssh\n" in archive.read(f"{info}/METADATA")
    assert b"Requires-Dist" not in archive.read(f"{info}/METADATA")
    assert archive.read(f"{info}/entry_points.txt") == (
        b"[console_scripts]\njupyter-gpu-meter-ssh = jupyter_gpu_meter_ssh:main\n"
    )
    record = archive.read(f"{info}/RECORD").decode().splitlines()
    assert record[-1] == f"{info}/RECORD,,"
    for line in record[:-1]:
        name, digest, size = line.split(",")
        content = archive.read(name)
        expected = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=")
        assert (digest, int(size)) == (f"sha256={expected.decode()}", len(content))
    assert sorted(archive.namelist()) == sorted(line.split(",")[0] for line in record)


async def test_the_meter_serves_it_to_anyone(meter):  # noqa: F811
    server, app = serve_app(meter)
    client = AsyncHTTPClient()
    try:
        response = await client.fetch(app.url + "ssh/" + FILENAME)
        assert response.body == client_wheel()[1]
        assert response.headers["Content-Type"] == "application/octet-stream"
        with pytest.raises(HTTPClientError) as moved:
            await client.fetch(app.url + "ssh/client.whl", follow_redirects=False)
        assert moved.value.code == 302
        assert moved.value.response.headers["Location"] == f"/services/gpu-meter/ssh/{FILENAME}"
        for name in ("other.whl", "jupyter_gpu_meter_ssh-0.0.1-py3-none-any.whl"):
            with pytest.raises(HTTPClientError) as missing:
                await client.fetch(app.url + "ssh/" + name)
            assert missing.value.code == 404
    finally:
        server.stop()


@pytest.mark.slow
async def test_pip_installs_it_from_the_meter_and_the_command_runs(meter, tmp_path):  # noqa: F811
    server, app = serve_app(meter)
    venv = tmp_path / "venv"
    try:
        await check(sys.executable, "-m", "venv", str(venv))
        await check(
            str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", "--no-deps",
            "--disable-pip-version-check", app.url + "ssh/" + FILENAME,
        )  # fmt: skip
    finally:
        server.stop()
    out = await check(str(venv / "bin" / "jupyter-gpu-meter-ssh"), "--help")
    assert "usage: jupyter-gpu-meter-ssh" in out and "--token-file" in out
    # the installed module is the whole client, run without our package
    out = await check(str(venv / "bin" / "python"), "-I", "-m", "jupyter_gpu_meter_ssh", "--help")
    assert "SERVER_URL" in out


async def check(*command) -> str:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, out.decode()
    return out.decode()
