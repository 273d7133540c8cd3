"""SSH through the hub: time to a command's output and to a prompt, and scp against docker cp.

One real hub with its proxy and the meter, ada's 1-GPU server, her key added
through ``api/ssh-keys``; the real OpenSSH client (the laptop of
tests/test_e2e_ssh.py) with the ProxyCommand users install: the client wheel,
pip-installed from the meter's URL into a fresh venv. Each round, interleaved
so all see the same load:

- ``ssh gpu-ada true``: from starting ssh until it exits (websocket through the
  proxy, key exchange, public-key login, the command), against ``docker exec
  <container> true`` (no network, no auth) as the baseline, and against the same
  ssh with ``python -m jupyter_gpu_meter.ssh_proxy`` (the whole package's client);
- ``ssh -tt gpu-ada``: from starting ssh until an interactive login shell
  prints the output of the first line typed into it;
- ``scp`` of a 100 MB random file up into the home through the proxy, against
  ``docker cp`` of the same file into the same container.

Usage, from the repository root after scripts/setup:

    .venv/bin/python benchmarks/ssh.py [--rounds 7] [--mib 100]
"""

import argparse
import os
import platform
import re
import secrets
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jupyter_gpu_meter.ssh_wheel import client_wheel  # noqa: E402
from tests.hub import Hub  # noqa: E402  (the same harness as the end-to-end tests)
from tests.metering import wait_until  # noqa: E402
from tests.test_e2e_ssh import Client, add_key  # noqa: E402  (the tests' laptop)


def timed(command, env=None) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - started


def time_to_prompt(client, alias, key, env) -> float:
    """Seconds from starting ``ssh -tt`` to the output of the first line typed."""
    marker = f"READY-{secrets.token_hex(4)}"
    started = time.perf_counter()
    shell = subprocess.Popen(
        ["ssh", *client.options(key), "-tt", alias],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    # typed ahead, as a person would: the shell reads it once it runs
    shell.stdin.write(f"echo {marker}\n".encode())
    shell.stdin.flush()
    # the output line, not the terminal's echo of the typed one ("echo READY-…"); bash
    # ends bracketed paste with "ESC[?2004l CR" just before it
    seen, output = re.compile(rf"[\r\n]{marker}\r?\n".encode()), b""
    selector = selectors.DefaultSelector()
    selector.register(shell.stdout, selectors.EVENT_READ)
    try:
        while not seen.search(output):
            if not selector.select(timeout=60):
                raise TimeoutError(f"no prompt within 60 s: {output[-500:]!r}")
            chunk = os.read(shell.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"ssh ended before the prompt: {output[-500:]!r}")
            output += chunk
        return time.perf_counter() - started
    finally:
        shell.stdin.write(b"exit\n")
        shell.stdin.close()
        shell.wait(30)


def installed_client(hub, work: Path) -> str:
    """The client as users get it: pip-installed from the meter's URL into a fresh venv."""
    filename, _ = client_wheel()
    venv = work / "client-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    url = hub.meter_url + "ssh/" + filename
    subprocess.run([*pip, "--disable-pip-version-check", url], check=True)
    return str(venv / "bin" / "jupyter-gpu-meter-ssh")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mib", type=int, default=100, help="the copied file's size")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jgm-bench-ssh-"))
    hub = Hub(work / "hub", docker.from_env(), "1", meter=True)
    times = {
        "ssh true": [],
        "docker exec true": [],
        "ssh -tt to output": [],
        "ssh true, python -m": [],
    }
    copies = {"scp through the proxy": [], "docker cp": []}
    try:
        hub.start()
        wait_until(lambda: requests.get(hub.meter_url + "api/health", timeout=5).ok, 60, "meter")
        hub.start_server("ada", {"gpus": 1})
        container = hub.container_of("ada")
        token = hub.user_token("ada")
        client = Client(hub, work / "laptop", installed_client(hub, work))
        alias = client.add_host("ada")
        key = client.key("ada")
        add_key(hub, token, key)
        env = client.env(token)
        ssh = ["ssh", *client.options(key), alias]
        # the same laptop with the whole package's client (python -m; what the tests run)
        package = Client(hub, work / "laptop-package")
        package.add_host("ada")
        by_package = ["ssh", *package.options(key), alias]
        payload = work / "payload.bin"
        with payload.open("wb") as file:
            for _ in range(args.mib):
                file.write(secrets.token_bytes(1024 * 1024))
        scp = ["scp", *client.options(key), str(payload), f"{alias}:payload.bin"]
        cp = ["docker", "cp", str(payload), f"{container.id}:/tmp/payload.bin"]
        timed([*ssh, "true"], env)  # warm up: host key recorded, page cache, the proxy's route
        timed([*by_package, "true"], env)
        for _ in range(args.rounds):
            times["ssh true"].append(timed([*ssh, "true"], env))
            times["ssh true, python -m"].append(timed([*by_package, "true"], env))
            times["docker exec true"].append(timed(["docker", "exec", container.id, "true"]))
            times["ssh -tt to output"].append(time_to_prompt(client, alias, key, env))
        for _ in range(max(3, args.rounds // 2)):
            copies["scp through the proxy"].append(timed(scp, env))
            copies["docker cp"].append(timed(cp))
        # the copy arrived whole
        remote = subprocess.run([*ssh, "sha256sum payload.bin"], env=env, capture_output=True)
        local = subprocess.run(["sha256sum", str(payload)], capture_output=True)
        assert remote.stdout.split()[0] == local.stdout.split()[0], (remote, local)
    finally:
        hub.cleanup()

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores")
    for kind, values in times.items():
        print(
            f"{kind:21s} median {statistics.median(values):.3f} s, "
            f"min {min(values):.3f} s, max {max(values):.3f} s ({len(values)} runs)"
        )
    ratio = statistics.median(times["ssh true"]) / statistics.median(times["docker exec true"])
    print(f"ratio ssh true / docker exec true (medians): {ratio:.2f}")
    ratio = statistics.median(times["ssh true, python -m"]) / statistics.median(times["ssh true"])
    print(f"ratio python -m jupyter_gpu_meter.ssh_proxy / installed client (medians): {ratio:.2f}")
    for kind, values in copies.items():
        median = statistics.median(values)
        print(
            f"{kind:22s} {args.mib} MiB: median {median:.2f} s = {args.mib / median:.1f} MiB/s "
            f"(min {min(values):.2f} s, max {max(values):.2f} s, {len(values)} copies)"
        )
    ratio = statistics.median(copies["scp through the proxy"]) / statistics.median(
        copies["docker cp"]
    )
    print(f"ratio scp / docker cp (median times): {ratio:.2f}")


if __name__ == "__main__":
    main()
