"""PyTorch in the notebook image, in a server started by our spawner through a real hub.

The image holds the real ``torch`` 2.9.1 wheel from PyPI with its CUDA
libraries (scripts/build-images, stage a2). One hub, one server with one
(simulated) GPU and the spawner's default hardening; every check runs inside
that container with ``docker exec`` as its own user, as a notebook's code runs.
There is no driver here: CUDA stays unavailable and DDP runs on the CPU (gloo).
"""

import io
import json
import secrets
import tarfile
from pathlib import Path

import pytest

from tests.hub import IMAGE, Hub

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

CHECKS = Path(__file__).parent / "torch_checks"
REPO = Path(__file__).resolve().parent.parent
HOME = "/home/jovyan"
WORK = f"{HOME}/torch-ci"  # the scripts' copy, in the user's home like their own code
USER = "ada"
#: the DDP template in the image (docker/templates/<slug>/ -> /opt/jupyter-gpu-meter/templates/)
TEMPLATE_SLUG = "ddp-on-n-gpus"
TEMPLATE = f"/opt/jupyter-gpu-meter/templates/{TEMPLATE_SLUG}"
#: GPUDockerSpawner's defaults (spawner_checks.py): a server nobody configured gets these
PIDS_LIMIT = 4096
SHM_SIZE = 1024**3
STACK = 64 * 2**20
#: what inside.py reports: the process's own view of its limits
INSIDE = """
import json, os, resource
def limit(name):
    return [-1 if v == resource.RLIM_INFINITY else v for v in resource.getrlimit(name)]
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines())
for path in ("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"):  # cgroup v2, v1
    if os.path.exists(path):
        pids_max = open(path).read().strip()
shm = os.statvfs("/dev/shm")
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(),
    "caps": {key: int(status[key], 16) for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb")},
    "no_new_privs": status["NoNewPrivs"].strip(),
    "pids_max": pids_max,
    "shm_bytes": shm.f_blocks * shm.f_frsize,
    "memlock": limit(resource.RLIMIT_MEMLOCK), "stack": limit(resource.RLIMIT_STACK),
}))
"""


@pytest.fixture(scope="module")
def server(request, tmp_path_factory, docker_client):
    """The hub and the running container of USER's server (1 GPU, every default)."""
    hub = Hub(tmp_path_factory.mktemp("torch-hub"), docker_client, simulated_gpus="1")
    failed_before = request.session.testsfailed
    try:
        hub.start()
        response = hub.start_server(USER, {"gpus": 1})
        assert response.status_code in (201, 202), response.text
        assert hub.wait_for(USER), hub.logs()
        container = hub.container_of(USER)
        put_files(container, WORK, *CHECKS.glob("*_check.py"))
        yield hub, container
    finally:
        if request.session.testsfailed > failed_before:  # what the hub and the server said
            print(hub.logs())
            for container in hub.containers(all=True):
                print(f"--- container {container.name}\n", container.logs(tail=50).decode())
        hub.cleanup()


def put_files(container, directory: str, *paths: Path):
    """Copy `paths` into `directory` in the container, owned by the notebook user."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        folder = tarfile.TarInfo(Path(directory).name)
        folder.type, folder.mode, folder.uid, folder.gid = tarfile.DIRTYPE, 0o755, 1000, 100
        tar.addfile(folder)
        for path in paths:
            data = path.read_bytes()
            info = tarfile.TarInfo(f"{Path(directory).name}/{path.name}")
            info.size, info.mode, info.uid, info.gid = len(data), 0o644, 1000, 100
            tar.addfile(info, io.BytesIO(data))
    assert container.put_archive(str(Path(directory).parent), archive.getvalue())


def run(container, *command: str, workdir: str = WORK, timeout: int = 300) -> str:
    """`command` as the container's own user (exec's default); its output. Fails on non-zero."""
    # a hung torchrun must fail the test, not hang CI: coreutils' timeout inside
    result = container.exec_run(["timeout", str(timeout), *command], workdir=workdir)
    output = result.output.decode(errors="replace")
    assert result.exit_code == 0, f"{command} exited with {result.exit_code}:\n{output[-6000:]}"
    return output


def last_json(output: str) -> dict:
    """The last line of `output` that is a JSON object (torch logs warnings before it)."""
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


def test_the_server_runs_with_the_spawners_hardening(server):
    _, container = server
    host = container.attrs["HostConfig"]
    assert container.attrs["Config"]["User"] == "1000:100"
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges:true" in host["SecurityOpt"] and host["Privileged"] is False
    assert host["PidsLimit"] == PIDS_LIMIT and host["ShmSize"] == SHM_SIZE
    ulimits = {limit["Name"]: limit for limit in host["Ulimits"]}
    assert ulimits["stack"]["Soft"] == ulimits["stack"]["Hard"] == STACK
    memlock = ulimits["memlock"]["Hard"]  # -1 (unlimited), or the most a finite engine grants
    assert memlock == -1 or memlock >= 8 * 2**20
    # ...and all of it in force for a process the notebook user starts
    inside = last_json(run(container, "python", "-c", INSIDE, workdir=HOME))
    assert (inside["uid"], inside["gid"]) == (1000, 100)
    assert inside["caps"] == {"CapEff": 0, "CapPrm": 0, "CapBnd": 0, "CapAmb": 0}
    assert inside["no_new_privs"] == "1"
    assert inside["pids_max"] == str(PIDS_LIMIT)
    assert inside["shm_bytes"] == SHM_SIZE
    assert inside["memlock"] == [memlock, memlock]
    assert inside["stack"] == [STACK, STACK]


def test_torch_imports_from_the_base_and_sees_no_gpu(server):
    _, container = server
    script = (
        "import json, sys, torch; print(json.dumps({'version': torch.__version__, "
        "'cuda': torch.version.cuda, 'available': torch.cuda.is_available(), "
        "'file': torch.__file__, 'prefix': sys.prefix}))"
    )
    seen = last_json(run(container, "python", "-c", script, workdir=HOME))
    assert seen["version"] == "2.9.1+cu128" and seen["cuda"] == "12.8"
    assert seen["available"] is False  # the GPU is simulated: no driver behind it
    # from the base's system site, seen through the venv as in the PyTorch image
    assert seen["file"].startswith("/usr/local/lib/python3.11/dist-packages/torch/")
    assert seen["prefix"] == "/opt/notebook"


def test_torchrun_runs_ddp_steps_on_two_cpu_processes_that_agree(server):
    _, container = server
    output = run(container, "torchrun", "--standalone", "--nproc_per_node=2", "ddp_check.py")
    ranks = [
        json.loads(run(container, "cat", f"ddp-{rank}.json")) for rank in range(2)
    ]  # each rank's own account
    assert [(r["rank"], r["world"], r["backend"]) for r in ranks] == [
        (0, 2, "gloo"),
        (1, 2, "gloo"),
    ], output
    # the venv's torchrun starts its workers with the venv's Python (its packages too)
    assert {r["python"] for r in ranks} == {"/opt/notebook/bin/python"}
    zero, one = ranks
    assert zero["start"] == one["start"]  # DDP broadcast rank 0's weights
    assert zero["params"] == one["params"]  # and the ranks agree after the steps
    assert zero["params"] != zero["start"]  # which did train
    # what DDP computed is the mean of both ranks' gradients, step by step
    assert zero["params"] == pytest.approx(zero["reference"], rel=1e-5, abs=1e-6)


def test_dataloader_workers_exchange_batches_through_shared_memory(server):
    _, container = server
    seen = last_json(run(container, "python", "loader_check.py"))
    assert seen["values"] == [float(i) for i in range(8)]
    assert len(seen["workers"]) == 2 and seen["main"] not in seen["workers"]
    assert seen["held_mib"] == 384  # more than Docker's default /dev/shm of 64 MiB


def test_the_dataloader_check_fails_with_dockers_default_shm(docker_client):
    """The check above would catch a server without its own /dev/shm size."""
    container = docker_client.containers.run(
        IMAGE,
        ["sleep", "infinity"],
        detach=True,
        network_mode="none",
        user="1000:100",
        cap_drop=["ALL"],
        name=f"jgm-test-torch-shm-{secrets.token_hex(3)}",
    )
    try:
        put_files(container, WORK, CHECKS / "loader_check.py")
        result = container.exec_run(["timeout", "300", "python", "loader_check.py"], workdir=WORK)
        assert result.exit_code != 0
        assert b"insufficient shared memory (shm)" in result.output
    finally:
        container.remove(force=True)


def test_the_ddp_template_notebook_executes(server):
    if not (REPO / "docker" / "templates" / TEMPLATE_SLUG).is_dir():
        pytest.skip(f"no docker/templates/{TEMPLATE_SLUG} in this checkout")
    _, container = server
    # as a user who opened the template: their own copy, run top to bottom
    run(container, "cp", "-r", TEMPLATE, f"{HOME}/template-ci", workdir=HOME)
    notebooks = run(container, "sh", "-c", "ls *.ipynb", workdir=f"{HOME}/template-ci").split()
    assert notebooks
    for notebook in notebooks:
        run(
            container,
            "jupyter",
            "nbconvert",
            "--to=notebook",
            "--execute",
            "--ExecutePreprocessor.timeout=300",
            f"--output=executed-{notebook}",
            notebook,
            workdir=f"{HOME}/template-ci",
            timeout=600,
        )
        executed = json.loads(
            run(container, "cat", f"executed-{notebook}", workdir=f"{HOME}/template-ci")
        )
        errors = [
            output
            for cell in executed["cells"]
            for output in cell.get("outputs", [])
            if output.get("output_type") == "error"
        ]
        assert not errors, errors
