"""The image's sshd (issue #14, item 1): docker/jupyter-gpu-meter-sshd in a container
of the notebook image with the spawner's hardening (uid 1000, no capabilities,
no-new-privileges), reached from inside the container with the real OpenSSH client.

The path through the hub (websocket, server-proxy, the client) is tests/test_e2e_ssh.py's.
"""

from __future__ import annotations

import io
import json
import tarfile
import uuid

import pytest

from jupyter_gpu_meter.container import Hardening, enforce_create_kwargs
from tests.hub import IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PORT = 2222
KEYS = "/home/jovyan/test-keys"
SSH = [
    "ssh",
    "-p",
    str(PORT),
    "-o",
    "BatchMode=yes",
    "-o",
    f"UserKnownHostsFile={KEYS}/known_hosts",
    "-o",
    "ConnectTimeout=20",
]


@pytest.fixture(scope="module")
def container(docker_client):
    name = f"jgm-test-image-ssh-{uuid.uuid4().hex[:8]}"
    kwargs = enforce_create_kwargs(
        {
            "image": IMAGE,
            "command": ["sleep", "infinity"],
            "name": name,
            "environment": {"JUPYTER_GPU_METER_SSH": "1", "MLFLOW_TRACKING_URI": "sqlite:///x"},
            "host_config": {"NetworkMode": "none"},
        },
        gpu_uuids=(),
        container_labels={},
        hardening=Hardening(),
    )
    created = docker_client.api.create_container(**kwargs)
    box = docker_client.containers.get(created["Id"])
    try:
        box.start()
        sh(
            box,
            f"mkdir -p {KEYS} && cd {KEYS} && ssh-keygen -q -N '' -t ed25519 -f good "
            "&& ssh-keygen -q -N '' -t ed25519 -f wrong",
        )
        put_keys(box, sh(box, f"cat {KEYS}/good.pub"))
        start_sshd(box)
        yield box
    finally:
        box.remove(force=True)


def sh(box, script: str, expect: int | None = 0) -> str:
    """`script` as the container's user (uid 1000); its output (stdout + stderr)."""
    result = box.exec_run(["timeout", "60", "bash", "-c", script])
    output = result.output.decode(errors="replace")
    if expect is not None:
        assert result.exit_code == expect, f"{script!r} exited {result.exit_code}:\n{output}"
    return output


def put_keys(box, text: str) -> None:
    """authorized_keys as the spawner and the meter write it: root-owned 0644 in 0755 dirs."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for directory in ("etc", "etc/jupyter-gpu-meter", "etc/jupyter-gpu-meter/ssh"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        data = text.encode()
        info = tarfile.TarInfo("etc/jupyter-gpu-meter/ssh/authorized_keys")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    assert box.put_archive("/", archive.getvalue())


def start_sshd(box) -> None:
    """The wrapper in the background (its pid, sshd's after exec, in /tmp/sshd.pid)."""
    box.exec_run(
        [
            "bash",
            "-c",
            f"echo $$ > /tmp/sshd.pid; exec jupyter-gpu-meter-sshd {PORT} 2>>/tmp/sshd.log",
        ],
        detach=True,
    )
    sh(
        box,
        f"for i in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/{PORT}) 2>/dev/null && exit 0; "
        "sleep 0.05; done; cat /tmp/sshd.log; exit 1",
    )


def ssh(box, *args: str, key: str = "good", expect: int | None = 0) -> str:
    command = " ".join([*SSH, "-i", f"{KEYS}/{key}", *args])
    return sh(box, command, expect)


def test_sshd_runs_as_the_notebook_user_on_localhost_only(container):
    pid = sh(container, "cat /tmp/sshd.pid").strip()
    status = sh(container, f"cat /proc/{pid}/status")
    assert "Uid:\t1000\t1000\t1000\t1000" in status
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
    listening = sh(container, "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null")
    # 127.0.0.1:2222 listening (state 0A), on no other address
    ports = [line.split()[1] for line in listening.splitlines()[1:] if line.split()[3:4] == ["0A"]]
    assert f"0100007F:{PORT:04X}" in ports
    assert not [p for p in ports if p.endswith(f":{PORT:04X}") and p != f"0100007F:{PORT:04X}"]


def test_a_key_login_runs_gpu_info(container):
    output = ssh(
        container, "-o StrictHostKeyChecking=accept-new", "jovyan@127.0.0.1", "gpu-info --json"
    )
    report = json.loads(output[output.index("{") :])
    assert "torch" in json.dumps(report)


def test_sessions_get_the_containers_environment_and_path(container):
    inside = dict(line.split("=", 1) for line in sh(container, "env").splitlines() if "=" in line)
    env = dict(
        line.split("=", 1)
        for line in ssh(container, "jovyan@127.0.0.1", "env").splitlines()
        if "=" in line
    )
    for name in ("NVIDIA_VISIBLE_DEVICES", "JUPYTER_GPU_METER_SSH", "MLFLOW_TRACKING_URI", "PATH"):
        assert env.get(name) == inside[name], name
    assert env["PATH"].startswith("/opt/notebook/bin:")
    # a login shell (ssh with a terminal) reads /etc/profile, which resets PATH
    remote = "'bash -lc \"echo PATH=\\$PATH; command -v python\"'"
    login = ssh(container, "jovyan@127.0.0.1", remote)
    assert "PATH=/opt/notebook/bin:" in login and "/opt/notebook/bin/python" in login


def test_passwords_unknown_keys_and_root_are_refused(container):
    wrong = ssh(container, "jovyan@127.0.0.1", "true", key="wrong", expect=255)
    assert "Permission denied (publickey)" in wrong
    password = sh(
        container,
        " ".join(
            [
                *SSH,
                "-o PubkeyAuthentication=no",
                "-o PreferredAuthentications=password,keyboard-interactive",
                "jovyan@127.0.0.1",
                "true",
            ]
        ),
        expect=255,
    )
    assert "Permission denied (publickey)" in password  # nothing but publickey offered
    root = ssh(container, "root@127.0.0.1", "true", expect=255)
    assert "Permission denied" in root
    assert "not allowed because not listed in AllowUsers" in sh(container, "cat /tmp/sshd.log")


def test_an_open_session_has_the_titles_the_activity_check_looks_for(container):
    sh(container, " ".join([*SSH, "-i", f"{KEYS}/good", "-f", "jovyan@127.0.0.1", "sleep 30"]))
    titles = sh(
        container,
        "/opt/notebook/bin/python -c 'from jupyterlab_gpu_meter.ssh_activity import "
        "process_titles, ssh_session_open; print(process_titles()); "
        'print(ssh_session_open("jovyan"))\'',
    )
    assert "'sshd: jovyan@notty'" in titles and "'sshd: jovyan [priv]'" in titles, titles
    assert titles.strip().endswith("True")
    sh(
        container,
        "kill $(grep -l '^sshd: jovyan@notty' /proc/[0-9]*/cmdline | cut -d/ -f3)",
        expect=None,
    )


def test_the_host_key_survives_a_restart(container):
    key = "/home/jovyan/.local/share/jupyter-gpu-meter/ssh/ssh_host_ed25519_key"
    assert sh(container, f"stat -c %a {key}").strip() == "600"
    before = sh(container, f"ssh-keygen -lf {key}.pub")
    sh(
        container,
        "kill $(cat /tmp/sshd.pid); "
        "while kill -0 $(cat /tmp/sshd.pid) 2>/dev/null; do sleep 0.05; done",
    )
    start_sshd(container)
    assert sh(container, f"ssh-keygen -lf {key}.pub") == before
    # known_hosts from the first login: a changed key would fail here
    ssh(container, "-o StrictHostKeyChecking=yes", "jovyan@127.0.0.1", "true")


#: inside the container: the websocket <base>sshd/ of a real jupyter server, through
#: jupyter-server-proxy's raw socket bridge, answers with sshd's banner
WEBSOCKET_CHECK = """
import asyncio, json, sys
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

async def main(port):
    base = f"127.0.0.1:{port}/user/ada/"
    headers = {"Authorization": "token t0ken"}
    for _ in range(600):  # the server starts in a few seconds
        try:
            await AsyncHTTPClient().fetch(f"http://{base}api/status", headers=headers)
            break
        except Exception:
            await asyncio.sleep(0.1)
    out = {}
    plain = await AsyncHTTPClient().fetch(
        f"http://{base}sshd", headers=headers, follow_redirects=False, raise_error=False)
    out["no_slash"] = [plain.code, plain.headers.get("Location")]
    try:
        ws = await websocket_connect(HTTPRequest(f"ws://{base}sshd/", headers=headers))
        banner = b""
        while not banner.endswith(b"\\n"):
            banner += await ws.read_message()
        out["banner"] = banner.decode()
        ws.close()
    except Exception as error:
        out["error"] = str(error)
    print(json.dumps(out))

asyncio.run(main(int(sys.argv[1])))
"""


def jupyter_server(box, port: int, ssh: str) -> dict:
    box.exec_run(
        [
            "bash",
            "-c",
            f"JUPYTER_GPU_METER_SSH={ssh} exec jupyter server --ServerApp.ip=127.0.0.1 "
            f"--ServerApp.port={port} --ServerApp.base_url=/user/ada/ "
            f"--IdentityProvider.token=t0ken > /tmp/server-{port}.log 2>&1",
        ],
        detach=True,
    )
    put_text(box, f"/tmp/ws_check_{port}.py", WEBSOCKET_CHECK)
    output = sh(box, f"/opt/notebook/bin/python /tmp/ws_check_{port}.py {port}")
    return json.loads(output.strip().splitlines()[-1])


def put_text(box, path: str, text: str) -> None:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo(path.rsplit("/", 1)[1])
        info.size, info.mode, info.uid, info.gid = len(data), 0o644, 1000, 100
        tar.addfile(info, io.BytesIO(data))
    assert box.put_archive(path.rsplit("/", 1)[0], archive.getvalue())


def test_the_server_proxy_entry_bridges_the_websocket_to_sshd(container):
    on = jupyter_server(container, 8890, "1")
    assert on.get("banner", "").startswith("SSH-2.0-OpenSSH"), (
        on,
        sh(container, "tail -30 /tmp/server-8890.log"),
    )
    assert on["no_slash"][0] in (301, 302)  # <server_url>sshd only redirects to sshd/
    off = jupyter_server(container, 8891, "0")
    # no entry: jupyter_server redirects sshd/ to sshd (its trailing-slash rule), which is 404
    assert "banner" not in off and off.get("error") == "HTTP 302: Found", off
    assert off["no_slash"][0] == 404


def test_the_wrapper_refuses_a_bad_port_and_root(container):
    for port in ("", "ssh", "0", "65536"):
        output = sh(container, f"jupyter-gpu-meter-sshd {port}", expect=2)
        assert "PORT" in output, output
    as_root = container.exec_run(["jupyter-gpu-meter-sshd", "2300"], user="0")
    assert as_root.exit_code == 2
    assert b"runs as the notebook user, not root" in as_root.output


def test_a_value_sshd_cannot_quote_is_left_out_and_said_so(container):
    port = 2224
    container.exec_run(
        [
            "bash",
            "-c",
            f"export JUPYTER_GPU_METER_QUOTE='a\"b' JUPYTER_GPU_METER_SPACE='a b'; "
            f"exec jupyter-gpu-meter-sshd {port} 2>/tmp/sshd-{port}.log",
        ],
        detach=True,
    )
    sh(
        container,
        f"for i in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && exit 0; "
        f"sleep 0.05; done; cat /tmp/sshd-{port}.log; exit 1",
    )
    env = sh(
        container,
        " ".join(
            [
                *SSH[:2],
                str(port),
                *SSH[3:],
                "-i",
                f"{KEYS}/good",
                "-o StrictHostKeyChecking=accept-new",
                "jovyan@127.0.0.1",
                "env",
            ]
        ),
    )
    assert "JUPYTER_GPU_METER_SPACE=a b" in env
    assert "JUPYTER_GPU_METER_QUOTE" not in env
    log = sh(container, f"cat /tmp/sshd-{port}.log")
    assert "JUPYTER_GPU_METER_QUOTE left out of SSH sessions" in log
