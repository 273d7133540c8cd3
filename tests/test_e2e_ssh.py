"""SSH into a GPU server with the real OpenSSH client, through a real hub, its proxy and its auth.

What a user does: make a key with ``ssh-keygen``, add it through the meter's
``api/ssh-keys`` with their token, write the ``~/.ssh/config`` block the usage
page shows (:func:`jupyter_gpu_meter.ssh_proxy.config_snippet`; its ProxyCommand
is this venv's ``python -m jupyter_gpu_meter.ssh_proxy``), then run ``ssh``,
``scp``, ``rsync -e ssh`` and ``ssh -L``. The token goes in
``$JUPYTERHUB_API_TOKEN``. Each call has its own known_hosts file, its key
alone (``IdentitiesOnly``, no agent) and ``BatchMode`` (nothing waits on a prompt).

One hub for the module (ada's 1-GPU server runs throughout); the culling test,
last, runs jupyterhub-idle-culler against it and ends with ada's server culled.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from jupyter_gpu_meter.ssh_proxy import config_snippet
from tests.hub import Hub, free_ports
from tests.metering import wait_until

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

PROFILES = [
    {"display_name": "1 GPU", "slug": "gpu-1", "gpus": 1, "default": True},
    {"display_name": "CPU only", "slug": "cpu"},
    {"display_name": "CPU, no SSH", "slug": "no-ssh", "ssh": False},
]
#: seconds between the notebook server's activity reports to the hub (default 300)
ACTIVITY_INTERVAL = 5
#: seconds between the image's looks for an open SSH session (default 30), as an admin
#: sets it: a traitlets option of the notebook server
SSH_CHECK_INTERVAL = 5
#: the culler's --timeout: four times an SSH check plus a report (a session's server
#: always has a last activity under 10 s old)
CULL_TIMEOUT = 40
CONFIG = {
    "GPUDockerSpawner.profile_list": PROFILES,
    "GPUDockerSpawner.environment": {"JUPYTERHUB_ACTIVITY_INTERVAL": str(ACTIVITY_INTERVAL)},
    "GPUDockerSpawner.args": [f"--GPUMeterSSH.activity_interval={SSH_CHECK_INTERVAL}"],
}


class Client:
    """The OpenSSH client of one laptop: a config file, known hosts, keys, the user's token."""

    def __init__(self, hub: Hub, directory: Path, proxy_command: str = ""):
        self.hub = hub
        self.dir = directory
        #: what runs as ssh's ProxyCommand: by default this checkout's client
        self.proxy_command = proxy_command or f"{sys.executable} -m jupyter_gpu_meter.ssh_proxy"
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "config"
        self.config.write_text("")
        self.known_hosts = directory / "known_hosts"

    def add_host(self, user: str, server: str = "") -> str:
        """The usage page's block for the server, with this laptop's ProxyCommand; its alias."""
        url = f"{self.hub.url}/user/{user}/" + (f"{server}/" if server else "")
        block = config_snippet(url, user, server).replace(
            "ProxyCommand jupyter-gpu-meter-ssh", f"ProxyCommand {self.proxy_command}"
        )
        assert f"ProxyCommand {self.proxy_command} {url}\n" in block
        with self.config.open("a") as file:
            file.write(block + "\n")
        return block.split()[1]

    def key(self, name: str) -> Path:
        """A new Ed25519 key pair made by ssh-keygen; the private key's path."""
        path = self.dir / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
            check=True,
        )
        return path

    def options(self, key: Path | None) -> list[str]:
        return [
            "-F",
            str(self.config),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=60",
            *(["-i", str(key)] if key else []),
        ]

    def env(self, token: str | None, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "SSH_ASKPASS")}
        env.pop("JUPYTERHUB_API_TOKEN", None)
        if token:
            env["JUPYTERHUB_API_TOKEN"] = token
        # the ProxyCommand's python imports this checkout's package
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return {**env, **extra}

    def run(self, tool: str, *args, key=None, token=None, timeout=180, env=None, options=()):
        """`tool` (ssh, scp) with this laptop's options; the finished process (text)."""
        return subprocess.run(
            [tool, *self.options(key), *options, *args],
            env=env or self.env(token),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )

    def ssh_command(self, key: Path) -> str:
        """``ssh`` with this laptop's options, as rsync's ``-e`` takes it."""
        return " ".join(["ssh", *self.options(key)])


def api(hub, token, method, path="", **kwargs) -> requests.Response:
    return requests.request(
        method,
        hub.meter_url + "api/ssh-keys" + path,
        headers={"Authorization": f"token {token}"},
        timeout=60,
        **kwargs,
    )


def add_key(hub, token, private: Path) -> dict:
    """POST the public half of `private`; the answer (201)."""
    response = api(hub, token, "POST", json={"key": private.with_suffix(".pub").read_text()})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def tools():
    """The OpenSSH client and rsync on this machine (scripts/setup installs them)."""
    missing = [tool for tool in ("ssh", "scp", "ssh-keygen", "rsync") if not shutil.which(tool)]
    if missing:
        message = f"{', '.join(missing)} missing: apt-get install openssh-client rsync "
        message += "(scripts/setup does)"
        if os.environ.get("JGM_REQUIRE_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, docker_client, tools):
    hub = Hub(tmp_path_factory.mktemp("hub"), docker_client, "2", meter=True, **CONFIG)
    try:
        hub.start()
        wait_until(
            lambda: requests.get(hub.meter_url + "api/health", timeout=5).ok, 60, "the meter"
        )
        response = hub.start_server("ada", {"profile": "gpu-1"})
        assert response.status_code in (201, 202) and hub.wait_for("ada"), response.text
        hub.tokens = {name: hub.user_token(name) for name in ("ada", "bob", "cyd")}
        hub.client = Client(hub, tmp_path_factory.mktemp("laptop"))
        hub.alias = hub.client.add_host("ada")
        hub.keys = {name: hub.client.key(name) for name in ("ada", "bob", "stranger")}
        added = add_key(hub, hub.tokens["ada"], hub.keys["ada"])
        assert added["servers_updated"] == [""]
        assert add_key(hub, hub.tokens["bob"], hub.keys["bob"])["servers_updated"] == []
        yield hub
    except BaseException:
        print(hub.logs())
        raise
    finally:
        hub.cleanup()


def as_ada(hub, *command, tool="ssh", key="ada", token="ada", **kwargs):
    """`command` through ada's server with ada's key and token unless told otherwise."""
    return hub.client.run(
        tool, *command, key=hub.keys[key], token=hub.tokens[token] if token else None, **kwargs
    )


def refused_by_sshd(result) -> bool:
    """ssh's own refusal: it reached sshd, which offered public keys only and took none."""
    return result.returncode == 255 and "Permission denied (publickey)" in result.stderr


# --- logging in ----------------------------------------------------------------


def test_key_login_runs_gpu_info_that_sees_only_the_servers_gpus(hub):
    result = as_ada(hub, hub.alias, "gpu-info", "--json")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    (uuid,) = hub.gpus_held()["ada/"]  # what the hub gave the server (its container's labels)
    assert seen["nvidia_visible_devices"] == uuid
    # the same as in a JupyterLab terminal
    assert seen == hub.seen_inside("ada")
    # the login user is the container's, not root
    assert as_ada(hub, hub.alias, "id", "-un").stdout.strip() == "jovyan"


def test_a_password_is_never_asked_for(hub, tmp_path):
    asked = tmp_path / "asked"
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\ntouch {asked}\necho hunter2\n")
    askpass.chmod(0o700)
    env = hub.client.env(
        hub.tokens["ada"], SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0"
    )
    result = hub.client.run(
        "ssh",
        hub.alias,
        "true",
        env=env,
        options=[
            "-o",
            "BatchMode=no",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "NumberOfPasswordPrompts=1",
        ],
    )
    assert refused_by_sshd(result), result.stderr
    assert not asked.exists(), "sshd offered a password prompt"


def test_an_unknown_key_is_refused(hub):
    assert refused_by_sshd(as_ada(hub, hub.alias, "true", key="stranger"))


def test_another_users_registered_key_is_refused(hub):
    # bob's key is in the ledger, and would open bob's servers; not ada's
    result = as_ada(hub, hub.alias, "true", key="bob")
    assert refused_by_sshd(result), result.stderr


def test_another_users_token_is_refused_by_the_hub_before_sshd(hub):
    result = as_ada(hub, hub.alias, "true", token="bob")
    assert result.returncode == 255
    # the client's one line: the hub said 403, ssh never reached sshd's banner
    assert "HTTP 403" in result.stderr and "may not reach" in result.stderr, result.stderr
    assert "Permission denied" not in result.stderr


def test_no_token_is_refused_by_the_hub(hub):
    result = as_ada(
        hub, hub.alias, "true", token=None, env=hub.client.env(None, HOME="/nonexistent")
    )
    assert result.returncode == 255
    assert "jupyter-gpu-meter-ssh" in result.stderr and "token" in result.stderr, result.stderr


# --- data and ports ------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_scp_round_trips_a_file_unchanged(hub, tmp_path):
    up = tmp_path / "up.bin"
    up.write_bytes(secrets.token_bytes(3 * 1024 * 1024 + 17))
    sent = as_ada(hub, str(up), f"{hub.alias}:scp-test.bin", tool="scp")
    assert sent.returncode == 0, sent.stderr
    back = tmp_path / "back.bin"
    fetched = as_ada(hub, f"{hub.alias}:scp-test.bin", str(back), tool="scp")
    assert fetched.returncode == 0, fetched.stderr
    assert sha256(back) == sha256(up)
    # and it is in ada's home, as a JupyterLab terminal sees it
    remote = as_ada(hub, hub.alias, "sha256sum ~/scp-test.bin").stdout.split()[0]
    assert remote == sha256(up)


def test_rsync_over_ssh_copies_a_tree_both_ways(hub, tmp_path):
    tree = tmp_path / "dataset"
    (tree / "sub").mkdir(parents=True)
    files = {"a.bin": secrets.token_bytes(200_000), "sub/b.txt": b"hello\n"}
    for name, data in files.items():
        (tree / name).write_bytes(data)
    env = hub.client.env(hub.tokens["ada"])
    ssh = hub.client.ssh_command(hub.keys["ada"])
    up = subprocess.run(
        ["rsync", "-a", "-e", ssh, f"{tree}/", f"{hub.alias}:rsync-test/"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert up.returncode == 0, up.stderr
    back = tmp_path / "back"
    down = subprocess.run(
        ["rsync", "-a", "-e", ssh, f"{hub.alias}:rsync-test/", f"{back}/"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert down.returncode == 0, down.stderr
    assert {name: (back / name).read_bytes() for name in files} == files


def test_a_local_forward_reaches_a_port_inside_the_container(hub):
    body = secrets.token_hex(16)
    remote_port, local_port = 18000 + secrets.randbelow(1000), free_ports(1)[0]
    made = as_ada(hub, hub.alias, f"mkdir -p ~/www && printf {body} > ~/www/index.txt")
    assert made.returncode == 0, made.stderr
    # a server bound to the container's loopback only: nothing outside reaches it but the tunnel
    hub.container_of("ada").exec_run(
        ["python3", "-m", "http.server", "--bind", "127.0.0.1", str(remote_port)],
        workdir="/home/jovyan/www",
        detach=True,
    )
    client = hub.client
    tunnel = subprocess.Popen(
        [
            "ssh",
            *client.options(hub.keys["ada"]),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            f"{local_port}:localhost:{remote_port}",
            hub.alias,
        ],
        env=client.env(hub.tokens["ada"]),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def fetch():
            assert tunnel.poll() is None, tunnel.stderr.read()
            try:
                response = requests.get(f"http://127.0.0.1:{local_port}/index.txt", timeout=10)
            except requests.ConnectionError:
                return None
            return response if response.ok else None

        assert wait_until(fetch, 60, "the page through the tunnel").text == body
    finally:
        tunnel.terminate()
        tunnel.wait(30)


def test_the_ci_one_liner_exits_with_the_remote_commands_status(hub):
    result = as_ada(
        hub, hub.alias, "cd ~ && python -c 'import sys; print(\"trained\"); sys.exit(7)'"
    )
    assert result.returncode == 7, result.stderr
    assert result.stdout == "trained\n"


# --- keys change while the server runs -------------------------------------------


def test_a_key_added_works_at_once_and_a_key_removed_stops_at_once(hub):
    laptop2 = hub.client.key("ada-laptop2")
    hub.keys["ada-laptop2"] = laptop2
    assert refused_by_sshd(as_ada(hub, hub.alias, "true", key="ada-laptop2"))
    added = add_key(hub, hub.tokens["ada"], laptop2)
    assert added["servers_updated"] == [""]
    assert as_ada(hub, hub.alias, "true", key="ada-laptop2").returncode == 0

    removed = api(hub, hub.tokens["ada"], "DELETE", f"/{added['key']['id']}")
    assert removed.status_code == 200, removed.text
    assert removed.json()["servers_updated"] == [""]
    assert refused_by_sshd(as_ada(hub, hub.alias, "true", key="ada-laptop2"))
    # ada's other key still works
    assert as_ada(hub, hub.alias, "true").returncode == 0


def test_a_named_server_started_later_has_the_keys_from_its_start(hub):
    # ada's keys from the ledger are in it from its start (the spawner writes them
    # before the container starts; the meter again when it sees it start)
    response = hub.start_server("ada", {"profile": "cpu"}, server="gpu1")
    assert response.status_code in (201, 202) and hub.wait_for("ada", "gpu1"), response.text
    alias = hub.client.add_host("ada", "gpu1")
    assert alias == "gpu-ada-gpu1"
    result = as_ada(hub, alias, "gpu-info --json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == hub.seen_inside("ada", "gpu1")  # its own, no GPU
    assert hub.gpus_held()["ada/gpu1"] == []
    hub.stop_server("ada", "gpu1")


def test_a_profile_with_ssh_off_refuses_with_the_clients_clear_message(hub):
    response = hub.start_server("cyd", {"profile": "no-ssh"})
    assert response.status_code in (201, 202) and hub.wait_for("cyd"), response.text
    cyd_key = hub.client.key("cyd")
    add_key(hub, hub.tokens["cyd"], cyd_key)  # cyd's server is not SSH-enabled: not pushed
    alias = hub.client.add_host("cyd")
    result = hub.client.run("ssh", alias, "true", key=cyd_key, token=hub.tokens["cyd"])
    assert result.returncode == 255
    assert "no SSH at" in result.stderr and "SSH is off" in result.stderr, result.stderr
    # once stopped, the client says so (the proxy sends the URL to the hub)
    hub.stop_server("cyd")
    result = hub.client.run("ssh", alias, "true", key=cyd_key, token=hub.tokens["cyd"])
    assert result.returncode == 255
    assert "is not running" in result.stderr, result.stderr


# --- an open SSH session keeps the server from the idle culler ------------------------


def last_activity(hub, user) -> datetime:
    text = hub.api("GET", f"/users/{user}").json()["servers"][""]["last_activity"]
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_an_open_ssh_session_keeps_the_server_past_the_cullers_timeout(hub, tmp_path):
    opened = datetime.now(timezone.utc)
    session = subprocess.Popen(
        ["ssh", *hub.client.options(hub.keys["ada"]), hub.alias, "sleep 600"],
        env=hub.client.env(hub.tokens["ada"]),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # jupyterhub-idle-culler as admins run it, with the test's admin token (its scopes
    # include the culler's); on its own, not as a hub service: no hub restart, whose
    # new proxy would cut the session
    log = (tmp_path / "culler.log").open("wb")
    culler = None
    try:
        # bob's server: nothing going on; ada's too but for her SSH session
        hub.start_server("bob", {"profile": "cpu"})
        # the session reaches the hub as ada's activity (the image checks every 5 s)
        wait_until(lambda: last_activity(hub, "ada") > opened, 90, "ada's SSH activity")
        culler = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterhub_idle_culler",
                f"--url={hub.api_url}",
                f"--timeout={CULL_TIMEOUT}",
                "--cull-every=5",
            ],
            env={**os.environ, "JUPYTERHUB_API_TOKEN": hub.settings["token"]},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: hub.server_model("bob") is None, 3 * CULL_TIMEOUT, "the culler: bob")
        # bob's was culled after CULL_TIMEOUT idle; ada's, with no other use since
        # before bob's started, is kept by her SSH session alone
        assert session.poll() is None, session.stderr.read()
        assert datetime.now(timezone.utc) - opened > timedelta(seconds=CULL_TIMEOUT)
        assert (hub.server_model("ada") or {}).get("ready"), "ada's server was culled"
        session.terminate()
        session.wait(30)
        # with the session closed, ada's server is culled as any idle one
        wait_until(lambda: hub.server_model("ada") is None, 4 * CULL_TIMEOUT, "the culler: ada")
    except BaseException:
        print((tmp_path / "culler.log").read_text(errors="replace")[-5000:])
        raise
    finally:
        for process in (session, culler):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(30)
        log.close()
