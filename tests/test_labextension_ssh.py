"""An open SSH session counts as activity (issue #14, item 5): the image's server
extension (docker/labextension/jupyterlab_gpu_meter/ssh_activity.py).

Against the real process table: processes of this test titled as sshd titles
its processes (``exec -a``; checked against OpenSSH 9.2 in tests/test_image_ssh.py),
and against jupyter_server's own ``last_activity()`` in a real ``jupyter server``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

LABEXT = Path(__file__).resolve().parent.parent / "docker" / "labextension"
sys.path.insert(0, str(LABEXT))

from jupyterlab_gpu_meter.ssh_activity import (  # noqa: E402
    SETTING,
    GPUMeterSSH,
    SSHActivity,
    is_session_title,
    process_titles,
    ssh_session_open,
)

from tests.metering import wait_until  # noqa: E402
from tests.test_labextension_server import free_port, wait_for_server  # noqa: E402


def titled(title: str) -> subprocess.Popen:
    """A real process whose /proc/<pid>/cmdline starts with `title`, as sshd's do.

    `title` is the process's argv[0] from its exec on. The kernel lets Popen go on
    before the new program's arguments are in place, so /proc shows them a moment
    later (longer on a loaded machine): wait for that, up to 30 s.
    """
    process = subprocess.Popen([title, "600"], executable=shutil.which("sleep"))

    def titled_yet():
        try:
            cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        except OSError:
            return False
        return cmdline.split(b"\0")[0] == title.encode()

    try:
        wait_until(titled_yet, 30, f"a process titled {title!r}")
    except BaseException:
        process.kill()
        raise
    return process


@pytest.fixture
def user():
    return f"jgmssh{uuid.uuid4().hex[:8]}"


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


@pytest.mark.parametrize(
    ("title", "counts"),
    [
        ("sshd: ada@pts/0", True),
        ("sshd: ada@notty", True),
        ("sshd: ada [priv]", True),
        ("sshd: ada [preauth]", False),
        ("sshd: [net]", False),
        ("sshd: [accepted]", False),
        ("sshd: /usr/sbin/sshd -D -e -f /tmp/x/sshd_config [listener] 0 of 10-100 startups", False),
        ("sshd: adam@pts/0", False),
        ("sshd: bob@pts/0", False),
        ("bash", False),
    ],
)
def test_only_an_authenticated_session_of_the_user_counts(title, counts):
    assert is_session_title(title, "ada") is counts


def test_a_real_session_process_is_found_and_its_end_seen(user, processes):
    assert not ssh_session_open(user)
    processes.append(titled(f"sshd: {user} [preauth]"))
    assert not ssh_session_open(user)  # knocking without a key keeps nothing alive
    session = titled(f"sshd: {user}@pts/3")
    processes.append(session)
    assert f"sshd: {user}@pts/3" in process_titles()
    assert ssh_session_open(user)
    assert not ssh_session_open(user, uid=os.getuid() + 4242)  # another user's processes
    session.kill()
    session.wait()
    assert not ssh_session_open(user)


def test_a_vanished_or_unreadable_process_is_skipped(tmp_path):
    (tmp_path / "self").mkdir()
    (tmp_path / "12").mkdir()  # ended between listdir and open: no cmdline
    (tmp_path / "13").mkdir()
    (tmp_path / "13" / "cmdline").write_bytes(b"sshd: ada@notty\0\0\0\0")
    assert process_titles(str(tmp_path)) == ["sshd: ada@notty"]
    assert ssh_session_open("ada", str(tmp_path))


def test_check_sets_the_setting_that_jupyter_servers_last_activity_reads(user, processes):
    from jupyter_server.serverapp import ServerWebApplication

    started = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    now = datetime(2026, 11, 30, 13, 0, tzinfo=timezone.utc)
    kernels = type("Kernels", (), {"last_kernel_activity": started})()
    app = ServerWebApplication.__new__(ServerWebApplication)  # its real last_activity()
    app.settings = {"started": started, "kernel_manager": kernels, "last_activity_times": {}}
    activity = SSHActivity(app.settings, user, 30, clock=lambda: now)
    assert activity.check() is False and SETTING not in app.settings
    assert app.last_activity() == started
    processes.append(titled(f"sshd: {user}@notty"))
    assert activity.check() is True
    assert app.last_activity() == now


def test_the_interval_must_be_positive_and_at_most_an_hour():
    assert GPUMeterSSH(activity_interval=0.5).activity_interval == 0.5
    for bad in (0, -1, 3601):
        with pytest.raises(ValueError, match="above 0 and at most 3600"):
            GPUMeterSSH(activity_interval=bad)


@pytest.mark.slow
async def test_a_jupyter_server_reports_activity_while_a_session_is_open(user, processes, tmp_path):
    port, token = free_port(), "lab-token-ssh"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(LABEXT), os.environ.get("PYTHONPATH", "")]),
        "USER": user,  # getpass.getuser(): the login sshd would accept
        "LOGNAME": user,
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
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
        "--ServerApp.allow_root=True",
        "--ServerApp.jpserver_extensions={'jupyterlab_gpu_meter': True}",
        "--GPUMeterSSH.activity_interval=0.2",
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    client = AsyncHTTPClient()
    status_url = f"http://127.0.0.1:{port}/api/status?token={token}"

    async def last_activity() -> datetime:
        # /api/status does not count as activity itself
        body = json.loads((await client.fetch(status_url)).body)
        return datetime.fromisoformat(body["last_activity"].replace("Z", "+00:00"))

    async def moves_past(moment: datetime, timeout: float = 30) -> datetime:
        deadline = asyncio.get_running_loop().time() + timeout
        while (seen := await last_activity()) <= moment:
            assert asyncio.get_running_loop().time() < deadline, f"still {seen}"
            await asyncio.sleep(0.1)
        return seen

    try:
        await wait_for_server(client, status_url, process)
        before = await last_activity()
        session = titled(f"sshd: {user}@pts/0")
        processes.append(session)
        seen = await moves_past(before)
        await moves_past(seen)  # and keeps moving while the session is open
        session.kill()
        session.wait()
        await asyncio.sleep(0.5)  # the check after the kill may still be in flight
        settled = await last_activity()
        await asyncio.sleep(1.0)  # five intervals
        assert await last_activity() == settled
    finally:
        process.terminate()
        output = (await asyncio.wait_for(process.communicate(), 30))[0].decode(errors="replace")
    assert f"an SSH session of {user} counts as activity" in output, output
