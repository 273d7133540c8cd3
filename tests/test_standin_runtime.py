"""scripts/standin/nvidia-container-runtime: the stand-in NVIDIA runtime of Swarm test nodes.

Its pieces on plain data, its refusals, and the real thing: a Docker-in-Docker
node whose dockerd runs it as the default runtime, as a Swarm node of
scripts/swarm-cluster does.
"""

import importlib.machinery
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from jupyter_gpu_meter.cluster import placement_constraint, task_gpu_uuids
from jupyter_gpu_meter.gpus import SIMULATED_ENV
from tests.test_cli import cli

SCRIPT = Path(__file__).parent.parent / "scripts" / "standin" / "nvidia-container-runtime"
#: a Debian image with docker.io and python3 (scripts/swarm-cluster builds it)
NODE_BASE = os.environ.get("JGM_NODE_BASE_IMAGE", "jupyter-gpu-meter/swarm-node-base:bookworm")
PREFIX = "jgm-standin-test"
H100 = "NVIDIA H100 80GB HBM3"
# every capability but CAP_SYS_RESOURCE, which this machine kind's bounding set lacks
# (so --privileged fails: "unable to apply caps")
NODE_CAPS = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
    "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER "
    "SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_TIME "
    "SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG "
    "WAKE_ALARM BLOCK_SUSPEND AUDIT_READ"
).split()


def load_script():
    loader = importlib.machinery.SourceFileLoader("standin_runtime", str(SCRIPT))
    spec = importlib.util.spec_from_loader("standin_runtime", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


runtime = load_script()


@pytest.mark.parametrize(
    "args, create",
    [
        (["--root", "/r", "--log", "/l.json", "create", "--bundle", "/b", "id"], True),
        (["create", "-b", "/b", "id"], True),
        (["--bundle", "create", "start", "id"], False),  # a bundle directory named "create"
        (["start", "id"], False),
        (["delete", "--force", "id"], False),
    ],
)
def test_is_create(args, create):
    assert runtime.is_create(args) is create


def test_bundle_dir(tmp_path, monkeypatch):
    assert runtime.bundle_dir(["create", "--bundle", "/a", "id"]) == "/a"
    assert runtime.bundle_dir(["create", "-b", "/b", "id"]) == "/b"
    assert runtime.bundle_dir(["create", "--bundle=/c", "id"]) == "/c"
    monkeypatch.chdir(tmp_path)
    assert runtime.bundle_dir(["create", "id"]) == str(tmp_path)  # runc's default


@pytest.mark.parametrize(
    "env, devices",
    [
        (["DOCKER_RESOURCE_NVIDIA-GPU=GPU-a,GPU-b"], "GPU-a,GPU-b"),
        (["PATH=/bin"], "void"),
        # without the swarm variable the container's own value stands, as with the real runtime
        (["NVIDIA_VISIBLE_DEVICES=all"], "all"),
        # with it, the swarm variable wins, even over an image's "all"
        (["NVIDIA_VISIBLE_DEVICES=all", "DOCKER_RESOURCE_NVIDIA-GPU=GPU-a"], "GPU-a"),
        (["NVIDIA_VISIBLE_DEVICES=all", "DOCKER_RESOURCE_NVIDIA-GPU="], "void"),
    ],
)
def test_visible_devices(env, devices):
    assert runtime.visible_devices(env) == devices


def test_rewrite_bundle_sets_the_variable_once(tmp_path):
    spec = {
        "ociVersion": "1.0.2",
        "process": {
            "env": ["A=1", "NVIDIA_VISIBLE_DEVICES=all", "DOCKER_RESOURCE_NVIDIA-GPU=GPU-x"]
        },
        "root": {"path": "rootfs"},
    }
    (tmp_path / "config.json").write_text(json.dumps(spec))
    assert runtime.rewrite_bundle(str(tmp_path)) == "GPU-x"
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["process"]["env"] == [
        "A=1",
        "DOCKER_RESOURCE_NVIDIA-GPU=GPU-x",
        "NVIDIA_VISIBLE_DEVICES=GPU-x",
    ]
    assert written["root"] == spec["root"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_install_and_its_refusals(tmp_path, monkeypatch, capsys):
    no_driver = tmp_path / "no-driver"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert runtime.install(str(tmp_path / "bin"), str(no_driver)) == 0
    installed = tmp_path / "bin" / "nvidia-container-runtime"
    assert installed.read_bytes() == SCRIPT.read_bytes() and os.access(installed, os.X_OK)
    # installing again over the stand-in is fine
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert runtime.install(str(tmp_path / "bin"), str(no_driver)) == 0

    driver = tmp_path / "version"
    driver.write_text("NVRM version: 550.54.15\n")
    assert runtime.install(str(tmp_path / "other"), str(driver)) == 1
    assert "NOT installed: an NVIDIA driver is present" in capsys.readouterr().err

    real = tmp_path / "real"
    real.mkdir()
    (real / "nvidia-container-runtime").write_text('#!/bin/sh\nexec runc "$@"\n')
    (real / "nvidia-container-runtime").chmod(0o755)
    monkeypatch.setenv("PATH", f"{real}:/usr/bin:/bin")
    assert runtime.install(str(tmp_path / "other"), str(no_driver)) == 1
    assert "NOT installed: the real runtime is at" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_refuses_to_create_next_to_a_driver(tmp_path, capsys):
    driver = tmp_path / "version"
    driver.write_text("NVRM version: 550.54.15\n")
    (tmp_path / "config.json").write_text('{"process": {"env": []}}')
    args = ["create", "--bundle", str(tmp_path), "id"]
    assert runtime.main(args, driver_file=str(driver), log_path=str(tmp_path / "log")) == 1
    assert "refusing to run next to a real NVIDIA driver" in capsys.readouterr().err
    assert json.loads((tmp_path / "config.json").read_text()) == {"process": {"env": []}}


def test_without_runc_it_says_so(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--version"],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    if any(Path(p).exists() for p in runtime.RUNC_CANDIDATES[1:]):
        assert result.returncode == 0 and "runc version" in result.stdout  # passed through
    else:
        assert result.returncode == 127 and "runc is not on PATH" in result.stderr


# --- the real thing: dockerd in a container, the stand-in its default runtime -------------


def node_exec(node, command, check=True):
    code, output = node.exec_run(["sh", "-c", command])
    output = output.decode(errors="replace")
    if check:
        assert code == 0, f"{command}: {output}"
    return output


def import_cat_image(node):
    """A tiny image in the node: cat and what it links, from the node's own files."""
    node_exec(
        node,
        "tar -c -h -C / usr/bin/cat lib64/ld-linux-x86-64.so.2 usr/lib/x86_64-linux-gnu/libc.so.6"
        " | docker import - jgm-standin-cat >/dev/null",
    )


@pytest.fixture
def node(docker_client, monkeypatch):
    """A Docker-in-Docker node configured by ``node-config --format json`` for 2 simulated
    H100s: their generic resources, the stand-in as the default runtime."""
    import docker

    try:
        docker_client.images.get(NODE_BASE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"no node image {NODE_BASE}: scripts/swarm-cluster up builds it")
    name = f"{PREFIX}-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(SIMULATED_ENV, f"2x{H100}")
    config = json.loads(cli("node-config", "--node", name, "--format", "json").stdout)
    start = (
        "mkdir -p /etc/docker && printf '%s' "
        f"{shlex.quote(json.dumps(config['daemon_json']))} > /etc/docker/daemon.json"
        " && /standin/nvidia-container-runtime --install /usr/local/bin"
        # images come only from `docker import` here: no registry to ask
        " && DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 exec dockerd --storage-driver vfs"
        " --iptables=false --ip-forward=false --bridge=none"
        " >/var/log/dockerd.log 2>&1"
    )
    network = docker_client.networks.create(name)
    container = None
    try:
        container = docker_client.containers.run(
            NODE_BASE,
            ["sh", "-c", start],
            name=name,
            hostname=name,
            detach=True,
            network=name,
            cap_add=NODE_CAPS,
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            tmpfs={"/run": ""},
            volumes={
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                str(SCRIPT.parent): {"bind": "/standin", "mode": "ro"},
            },
        )
        deadline = time.monotonic() + 60
        while node_exec(container, "docker info >/dev/null 2>&1; echo $?", check=False) != "0\n":
            container.reload()
            assert container.status == "running", container.logs().decode()
            assert time.monotonic() < deadline, node_exec(container, "cat /var/log/dockerd.log")
            time.sleep(0.2)
        container.node_config = config
        yield container
    finally:
        if container is not None:
            container.remove(force=True, v=True)
        network.remove()


@pytest.mark.docker
@pytest.mark.slow
def test_a_node_runs_containers_through_the_stand_in(node):
    assert node_exec(node, "docker info --format '{{.DefaultRuntime}}'").strip() == "nvidia"
    import_cat_image(node)

    def environment(*env):
        flags = " ".join(f"-e {shlex.quote(e)}" for e in env)
        # run, wait, then read the log: an attached `docker run` of a container this short
        # can miss its output
        out = node_exec(
            node,
            f"c=$(docker run -d --network none {flags} jgm-standin-cat cat /proc/self/environ)"
            ' && docker wait "$c" >/dev/null && docker logs "$c" && docker rm "$c" >/dev/null',
        )
        return dict(entry.split("=", 1) for entry in out.split("\0") if "=" in entry)

    two = environment("DOCKER_RESOURCE_NVIDIA-GPU=GPU-a,GPU-b")
    assert two["NVIDIA_VISIBLE_DEVICES"] == "GPU-a,GPU-b"
    assert environment()["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert environment("NVIDIA_VISIBLE_DEVICES=all")["NVIDIA_VISIBLE_DEVICES"] == "all"
    both = environment("NVIDIA_VISIBLE_DEVICES=all", "DOCKER_RESOURCE_NVIDIA-GPU=GPU-c")
    assert both["NVIDIA_VISIBLE_DEVICES"] == "GPU-c"
    log = node_exec(node, "cat /var/log/jupyter-gpu-meter-standin-runtime.log").splitlines()
    assert [line.rsplit(" ", 1)[1] for line in log] == [
        "NVIDIA_VISIBLE_DEVICES=GPU-a,GPU-b",
        "NVIDIA_VISIBLE_DEVICES=void",
        "NVIDIA_VISIBLE_DEVICES=all",
        "NVIDIA_VISIBLE_DEVICES=GPU-c",
    ]
    assert all(" create bundle=/" in line for line in log)


@pytest.mark.docker
@pytest.mark.slow
def test_a_swarm_node_configured_by_node_config_gives_a_task_its_gpus(node):
    """node-config's daemon.json and label command, a one-node swarm, a service asking for
    2 GPUs of the model by the label constraint (a model name with spaces): the task's
    container gets DOCKER_RESOURCE_NVIDIA-GPU = the node's two UUIDs, comma-separated, and
    the stand-in turns it into NVIDIA_VISIBLE_DEVICES."""
    uuids = [gpu["uuid"] for gpu in node.node_config["gpus"]]
    advertised = node_exec(node, "docker info --format '{{json .GenericResources}}'")
    assert {r["NamedResourceSpec"]["Value"] for r in json.loads(advertised)} == set(uuids)
    import_cat_image(node)
    address = node_exec(node, "hostname -i").split()[0]
    node_exec(node, f"docker swarm init --advertise-addr {address} >/dev/null")
    node_exec(node, shlex.join(node.node_config["label_command"]))
    constraint = placement_constraint(H100)
    node_exec(
        node,
        "docker service create -d --no-resolve-image --name gpus --restart-condition none"
        f" --generic-resource NVIDIA-GPU=2 --constraint {shlex.quote(constraint)}"
        " jgm-standin-cat cat /proc/self/environ >/dev/null 2>&1",
    )
    deadline = time.monotonic() + 90
    state = ""
    while not state.startswith("Complete"):
        assert time.monotonic() < deadline, node_exec(node, "docker service ps --no-trunc gpus")
        time.sleep(0.2)
        state = node_exec(node, "docker service ps gpus --format '{{.CurrentState}}'")
    task = json.loads(node_exec(node, "docker inspect $(docker service ps -q gpus)"))[0]
    assert task_gpu_uuids(task) == uuids
    container = task["Status"]["ContainerStatus"]["ContainerID"]
    env = json.loads(
        node_exec(node, f"docker inspect --format '{{{{json .Config.Env}}}}' {container}")
    )
    assert f"DOCKER_RESOURCE_NVIDIA-GPU={','.join(uuids)}" in env
    seen = node_exec(node, f"docker logs {container}").split("\0")
    assert f"NVIDIA_VISIBLE_DEVICES={','.join(uuids)}" in seen
