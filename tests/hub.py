"""A real JupyterHub with its proxy, in a subprocess, for end-to-end tests.

The hub runs the production GPUDockerSpawner against the real Docker engine;
only the GPUs are simulated (JUPYTER_GPU_METER_SIMULATED_GPUS), and dockerd
accepts their device requests through the stand-in NVIDIA runtime hook.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urljoin

import requests

from jupyter_gpu_meter import labels

IMAGE = os.environ.get("JGM_IMAGE", "jupyter-gpu-meter/notebook:test")


@contextlib.contextmanager
def derived_image(docker_client, tag: str, *instructions: str):
    """An image built FROM the test image with `instructions` (Dockerfile lines), removed after.

    No network, no intermediate containers left behind. It inherits the test
    image's labels (its build hash too): scripts/build-images never mistakes it for ours.
    """
    dockerfile = "\n".join([f"FROM {IMAGE}", *instructions, ""]).encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    docker_client.images.build(
        fileobj=context, custom_context=True, tag=tag, network_mode="none", rm=True, forcerm=True
    )
    try:
        yield tag
    finally:
        for container in docker_client.containers.list(all=True, filters={"ancestor": tag}):
            container.remove(force=True)
        docker_client.images.remove(tag, force=True)


#: the notebooks' network of the test hubs: internal (nothing leaves the machine), ICC off
TEST_NETWORK = os.environ.get("JGM_TEST_NETWORK", "jgm-test-notebooks")
#: every port this process has handed out: never twice, even before its server binds it
_ports_given: set[int] = set()
#: below Linux's ephemeral ports (32768-60999), which the kernel hands out for bind(0)
#: and outgoing connections: each xdist worker chooses in its own part of this range
WORKER_PORTS = (10000, 32000)


def worker_ports() -> range | None:
    """This pytest-xdist worker's own ports (None outside xdist): workers' hubs never
    pick the same port, even in the moment between choosing it and binding it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return None
    index, count = int(worker[2:]), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    span = (WORKER_PORTS[1] - WORKER_PORTS[0]) // max(count, index + 1)
    return range(WORKER_PORTS[0] + index * span, WORKER_PORTS[0] + (index + 1) * span)


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on every address now, none handed out before.

    Each candidate stays bound until all are chosen, so the kernel cannot give
    the same one twice; ports already given to an earlier hub (whose meter may
    not listen yet) are skipped. Under pytest-xdist, only this worker's ports.
    """
    own = worker_ports()
    candidates = iter(own) if own is not None else None
    held, ports = [], []
    try:
        while len(ports) < count:
            sock = socket.socket()
            held.append(sock)
            if candidates is None:
                sock.bind(("", 0))
            else:
                port = next((p for p in candidates if p not in _ports_given), None)
                if port is None:
                    raise RuntimeError(f"no free port left in this worker's {own}")
                try:
                    sock.bind(("", port))
                except OSError:  # in use by something else on this machine
                    continue
            port = sock.getsockname()[1]
            if port not in _ports_given:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    _ports_given.update(ports)
    return ports


HUB_CONFIG = """
import json, os
c = get_config()  # noqa
settings = json.loads(os.environ["JGM_TEST_SETTINGS"])
if settings.get("base_config"):  # e.g. the shipped jupyterhub_config.py, then the test's own
    load_subconfig(settings["base_config"])  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = settings["port"]
c.JupyterHub.hub_port = settings["hub_port"]
if settings["network"] == "host":  # single-tenant: notebooks share the host's network
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.GPUDockerSpawner.network_name = "host"
else:  # as shipped: the notebooks' own network, the hub on its gateway
    from jupyter_gpu_meter.hubconfig import setup_network

    setup_network(c, settings["network"], internal=True)
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:%i" % settings["proxy_api_port"]
c.ConfigurableHTTPProxy.auth_token = settings["proxy_token"]
c.JupyterHub.db_url = "sqlite:///" + settings["dir"] + "/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = settings["dir"] + "/cookie_secret"
c.JupyterHub.pid_file = settings["dir"] + "/hub.pid"
c.JupyterHub.cleanup_servers = False  # a hub restart keeps the servers running
c.JupyterHub.allow_named_servers = True
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"admin"}
c.JupyterHub.services = [{"name": "test-admin", "api_token": settings["token"]}]
c.JupyterHub.load_roles = [
    {
        "name": "test-admin",
        "scopes": ["admin:users", "admin:servers", "tokens"],
        "services": ["test-admin"],
    }
]
c.JupyterHub.spawner_class = "gpu-docker"
c.GPUDockerSpawner.image = settings["image"]
c.GPUDockerSpawner.pull_policy = "never"
c.GPUDockerSpawner.name_template = settings["prefix"] + "{username}--{servername}"
# each test hub's homes are its own (and removed with it)
c.HomeVolumes.name_template = settings["prefix"] + "home-{username}"
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90
if settings.get("meter"):  # the meter service, managed by the hub, reading this same file
    # the service, its role, the read-all scope, users' access, the nav link
    from jupyter_gpu_meter.hubconfig import setup_meter

    c.MeterService.db_url = settings["ledger_url"]
    c.MeterService.reconcile_interval = 5
    c.MeterService.flush_interval = 1
    setup_meter(
        c,
        __file__,
        url="http://127.0.0.1:%i" % settings["meter_port"],
        environment={
            key: os.environ[key]
            for key in ("JGM_TEST_SETTINGS", "FAKE_NVML_STATE")
            if key in os.environ
        },
    )
    if settings.get("meter_clock"):  # MeterService.clock: the test moves it through a file
        from datetime import timedelta

        from jupyter_gpu_meter.clock import utcnow

        def meter_clock(path=settings["meter_clock"]):  # the system's + the file's seconds
            try:
                with open(path) as file:
                    ahead = float(file.read() or 0)
            except FileNotFoundError:
                ahead = 0.0
            return utcnow() + timedelta(seconds=ahead)

        c.MeterService.clock = meter_clock
for key, value in settings["extra"].items():
    section, name = key.split(".")
    if key in ("JupyterHub.services", "JupyterHub.load_roles"):  # added to the test's own
        getattr(c.JupyterHub, name).extend(value)
    else:
        setattr(getattr(c, section), name, value)
from jupyter_gpu_meter.hubconfig import check_config

check_config(c)
"""


class Hub:
    """A JupyterHub process and the admin-scoped token to drive it over REST."""

    def __init__(
        self,
        tmp_path: Path,
        docker_client,
        simulated_gpus: str | None = "2",
        env=None,
        base_config: str | None = None,
        meter: bool = False,
        network: str = TEST_NETWORK,
        meter_clock: bool = False,
        **extra,
    ):
        self.dir = tmp_path
        self.docker = docker_client
        self.prefix = f"jgm-test-{secrets.token_hex(3)}-"
        port, hub_port, proxy_api_port, meter_port = free_ports(4)
        self.settings = {
            "port": port,
            "hub_port": hub_port,
            "proxy_api_port": proxy_api_port,
            "network": network,
            "proxy_token": secrets.token_hex(16),
            "token": secrets.token_hex(16),
            "dir": str(tmp_path),
            "image": IMAGE,
            "prefix": self.prefix,
            "extra": extra,
            "base_config": base_config,
            "meter": meter,
            "meter_port": meter_port,
            "ledger_url": f"sqlite:///{tmp_path}/ledger.sqlite",
            # a clock the test moves (move_meter_clock), or the system's
            "meter_clock": str(tmp_path / "meter-clock-ahead") if meter_clock else "",
        }
        tmp_path.mkdir(parents=True, exist_ok=True)
        (tmp_path / "jupyterhub_config.py").write_text(HUB_CONFIG)
        self.env = {**(env or os.environ), "JGM_TEST_SETTINGS": json.dumps(self.settings)}
        if simulated_gpus is None:  # the GPUs come from NVML (a test passes its env)
            self.env.pop("JUPYTER_GPU_METER_SIMULATED_GPUS", None)
        else:
            self.env["JUPYTER_GPU_METER_SIMULATED_GPUS"] = simulated_gpus
            if worker := os.environ.get("PYTEST_XDIST_WORKER"):
                # UUIDs of this worker's own: the other worker's hubs on this engine would
                # count its GPUs as held ("another hub's servers"); this worker's hubs still
                # share theirs, as two hubs of one test do on purpose
                self.env.setdefault("JUPYTER_GPU_METER_SIMULATED_HOST", f"xdist-{worker}")
        self.url = f"http://127.0.0.1:{self.settings['port']}"
        self.api_url = self.url + "/hub/api"
        self.session = requests.Session()
        self.session.headers["Authorization"] = "token " + self.settings["token"]
        self.process = None
        self.starts = 0

    # --- process -------------------------------------------------------------

    def start(self):
        self.starts += 1
        log = open(self.dir / f"hub-{self.starts}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(self.dir / "jupyterhub_config.py")],
            cwd=self.dir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the hub exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if self.session.get(self.api_url + "/", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the hub did not answer within 60 s:\n{self.logs()}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self):
        """SIGKILL the hub: no clean shutdown, as in a crash or an OOM kill."""
        self.process.kill()
        self.process.wait()

    def restart(self, **extra):
        """Stop the hub (its managed services with it) and start it again, with `extra` config."""
        self.stop()
        if extra:
            self.settings["extra"].update(extra)
            self.env["JGM_TEST_SETTINGS"] = json.dumps(self.settings)
        return self.start()

    @property
    def ledger_url(self) -> str:
        return self.settings["ledger_url"]

    @property
    def meter_url_direct(self) -> str:
        """The meter's own address, as another hub service reaches it (not through the proxy)."""
        return f"http://127.0.0.1:{self.settings['meter_port']}/services/gpu-meter/"

    @property
    def meter_url(self) -> str:
        return f"{self.url}/services/gpu-meter/"

    def meter_pid(self) -> int | None:
        """The pid of the meter service process the hub started, if it runs."""
        out = subprocess.run(
            ["pgrep", "-f", f"jupyter_gpu_meter.cli --config {self.dir}/jupyterhub_config.py"],
            capture_output=True,
            text=True,
        ).stdout.split()
        return int(out[0]) if out else None

    # --- the meter's clock and health ------------------------------------------

    def move_meter_clock(self, to: datetime) -> None:
        """Set the meter's clock (``MeterService.clock``, from ``meter_clock=True``) to `to`;
        it runs on from there. Only forward: the hub and Docker keep the real time."""
        path = Path(self.settings["meter_clock"])
        assert path.name, "start the hub with meter_clock=True to move the meter's clock"
        ahead = (to - datetime.now(timezone.utc)).total_seconds()
        assert ahead >= self.meter_clock_ahead(), "the meter's clock only moves forward"
        partial = path.with_suffix(".partial")
        partial.write_text(repr(ahead))
        partial.replace(path)  # the meter never reads half a number

    def meter_clock_ahead(self) -> float:
        path = Path(self.settings["meter_clock"])
        return float(path.read_text()) if path.name and path.exists() else 0.0

    def meter_now(self) -> datetime:
        """What the meter's clock says now."""
        return datetime.now(timezone.utc) + timedelta(seconds=self.meter_clock_ahead())

    def meter_health(self) -> dict | None:
        """The meter's ``api/health``, or None while it does not answer."""
        try:
            response = requests.get(self.meter_url_direct + "api/health", timeout=5)
        except requests.ConnectionError:
            return None
        return response.json() if response.ok else None

    def wait_for_policy_check(self, timeout: float = 30) -> dict:
        """Wait until a policy check that began at the meter's time now has run; its health."""
        since = self.meter_now()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.meter_health() or {}
            checked = health.get("last_policy_check")
            if checked and datetime.fromisoformat(checked) >= since:
                return health
            time.sleep(0.2)
        raise TimeoutError(f"no policy check began after {since} within {timeout} s")

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n" + path.read_text(errors="replace")[-20000:]
            for path in sorted(self.dir.glob("hub-*.log"))
        )

    def containers(self, all=False):
        """This hub's notebook containers (not the helpers that work on its homes)."""
        # ignore_removed: a container that goes away between the list and its
        # inspect (a stop racing this call) is simply not listed
        return self.docker.containers.list(
            all=all, filters={"name": self.prefix, "label": labels.MANAGED}, ignore_removed=True
        )

    def cleanup(self):
        self.stop()
        # notebooks, and any helper container left on its homes
        for container in self.docker.containers.list(
            all=True, filters={"name": self.prefix}, ignore_removed=True
        ):
            container.remove(force=True)
        for volume in self.volumes():
            volume.remove(force=True)

    def volumes(self):
        """This hub's Docker volumes (homes, snapshots): their names start with its prefix."""
        return [
            volume
            for volume in self.docker.volumes.list(filters={"name": self.prefix})
            if volume.name.startswith(self.prefix)
        ]

    def home_of(self, user: str) -> str:
        """The name of `user`'s home volume on this hub."""
        from jupyter_gpu_meter.homes import home_volume_name

        return home_volume_name(self.prefix + "home-{username}", user)

    # --- REST --------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.session.request(method, self.api_url + path, timeout=120, **kwargs)

    def create_users(self, *names):
        response = self.api("POST", "/users", json={"usernames": list(names)})
        assert response.status_code in (201, 409), response.text
        return names

    def user_token(self, user: str) -> str:
        """A new API token of `user`, as a script of theirs would hold."""
        self.create_users(user)
        response = self.api("POST", f"/users/{user}/tokens", json={"note": "test"})
        assert response.status_code == 201, response.text
        return response.json()["token"]

    def start_server(self, user: str, options=None, server: str = "", wait=True):
        """POST the start; with wait, follow the spawn until it ends. Returns the response.

        A 201 is followed too: JupyterHub 6.1 has answered 201 for a start still waiting
        for the server to respond (after its slow_spawn_timeout, under load, on a server
        whose previous start failed), the model not yet ready."""
        self.create_users(user)
        path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
        response = self.api("POST", path, json=options if options is not None else {})
        if wait and response.status_code in (201, 202):
            self.wait_for(user, server)
        return response

    def time_to_ready(self, user: str, options: dict) -> float:
        """Seconds from the start request until the hub reports the server ready; then stop it."""
        started = time.perf_counter()
        response = self.start_server(user, options)
        assert response.status_code in (201, 202), response.text
        assert self.wait_for(user)
        elapsed = time.perf_counter() - started
        self.stop_server(user)
        return elapsed

    def server_model(self, user: str, server: str = ""):
        model = self.api("GET", f"/users/{user}").json()
        return model.get("servers", {}).get(server)

    def wait_for(self, user: str, server: str = "", timeout: float = 120):
        """Wait until the server is ready or has failed; True when ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.server_model(user, server)
            if model is None:
                return False
            if model.get("ready"):
                return True
            time.sleep(0.5)
        raise TimeoutError(f"{user}/{server} neither ready nor failed after {timeout} s")

    def stop_server(self, user: str, server: str = ""):
        path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
        response = self.api("DELETE", path)
        assert response.status_code in (202, 204), response.text
        deadline = time.monotonic() + 60
        while self.server_model(user, server) is not None:
            assert time.monotonic() < deadline, f"{user}/{server} did not stop"
            time.sleep(0.3)

    def start_many(self, requests_):
        """Start (user, options) pairs concurrently; returns their responses in order."""
        for user, _ in requests_:
            self.create_users(user)
        with ThreadPoolExecutor(len(requests_)) as pool:
            return list(
                pool.map(lambda pair: self.start_server(pair[0], pair[1], wait=True), requests_)
            )

    # --- what the containers hold ------------------------------------------

    def container_of(self, user: str, server: str = ""):
        (container,) = [
            c
            for c in self.containers()
            if c.labels.get(labels.USER) == user and c.labels.get(labels.SERVER) == server
        ]
        return container

    def gpus_held(self) -> dict[str, list[str]]:
        """user/server -> GPU UUIDs, for every running container of this hub."""
        return {
            f"{c.labels[labels.USER]}/{c.labels[labels.SERVER]}": labels.gpus_from_labels(c.labels)
            for c in self.containers()
        }

    def seen_inside(self, user: str, server: str = "") -> dict:
        """What the notebook user sees in their container: gpu-info --json run as them."""
        result = self.container_of(user, server).exec_run(["gpu-info", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)


def login(hub: Hub, username: str) -> requests.Session:
    """A browser-like session logged in to the hub (the dummy authenticator takes any password)."""
    browser = requests.Session()
    browser.get(hub.url + "/hub/login", timeout=30)
    xsrf = browser.cookies.get("_xsrf")
    response = browser.post(
        hub.url + "/hub/login",
        data={"username": username, "password": "any", "_xsrf": xsrf},
        timeout=30,
    )
    assert response.ok, response.text
    return browser


def post_form(browser: requests.Session, url: str, data: dict) -> requests.Response:
    """Submit the form on the page at `url` as a browser does (to its action, with its token)."""
    page = browser.get(url, timeout=30)
    action = re.search(r'<form[^>]*action="([^"]+)"', page.text).group(1)
    return browser.post(urljoin(url, html.unescape(action)), data=data, timeout=120)
