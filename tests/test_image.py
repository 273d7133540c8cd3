"""The notebook image built from docker/Dockerfile, as the hub will run it."""

import json
import re

import jupyterhub
import pytest

from jupyter_gpu_meter import labels
from tests.hub import IMAGE

pytestmark = [pytest.mark.docker]


def run(docker_client, *command, **kwargs):
    return docker_client.containers.run(
        IMAGE, list(command), remove=True, network_mode="none", **kwargs
    ).decode()


def test_runs_as_a_non_root_user_by_default(docker_client):
    assert run(docker_client, "id").startswith("uid=1000(jovyan) gid=100(users)")
    assert run(docker_client, "sh", "-c", "echo $HOME").strip() == "/home/jovyan"


def test_singleuser_server_matches_the_hubs_major_version(docker_client):
    version = run(docker_client, "python", "-c", "import jupyterhub; print(jupyterhub.__version__)")
    assert version.split(".")[0] == jupyterhub.__version__.split(".")[0]
    assert run(docker_client, "jupyter", "lab", "--version").strip()


@pytest.mark.slow  # importing torch: seconds
def test_gpu_info_reports_what_pytorch_and_the_container_see(docker_client):
    info = json.loads(run(docker_client, "gpu-info", "--json"))
    # the real CUDA build of PyTorch (from the base, seen through the venv) loads
    # without a GPU and says there is none, as on a CPU-only server
    assert info["torch_version"].startswith("2.9.1+cu")
    assert "error" not in info
    assert info["cuda_available"] is False and info["device_count"] == 0
    assert (
        info["nvidia_visible_devices"] == "all"
    )  # the image's default, which the spawner overrides
    assert "PyTorch 2.9.1" in run(docker_client, "gpu-info")


def test_gpu_info_without_pytorch_says_so(docker_client):
    # python -S: no site-packages, so no torch; a base without PyTorch looks like this
    human = run(docker_client, "/usr/bin/python3", "-S", "/usr/local/bin/gpu-info")
    assert "PyTorch is not installed" in human


def test_image_declares_its_cuda_version_label(docker_client):
    image_labels = docker_client.images.get(IMAGE).labels
    assert labels.CUDA_VERSION in image_labels  # empty here: no CUDA in the Debian test base


def test_the_jupyterlab_extension_is_installed_and_enabled(docker_client):
    """jupyterlab-gpu-meter (docker/labextension): server extension and prebuilt frontend."""
    listed = run(
        docker_client,
        "sh",
        "-c",
        "jupyter server extension list 2>&1; jupyter labextension list 2>&1",
        environment={"NO_COLOR": "1", "TERM": "dumb"},
    )
    plain = re.sub(r"\x1b\[[0-9;]*m", "", listed)
    assert re.search(r"jupyterlab_gpu_meter enabled", plain), plain
    assert re.search(r"jupyterlab_gpu_meter \S+ OK", plain), plain
    frontend = r"jupyterlab-gpu-meter v\S+ enabled OK \(python, jupyterlab-gpu-meter\)"
    assert re.search(frontend, plain), plain
