"""Starts that go wrong: nothing is leaked and the user is told why."""

import html
import re

import pytest

from tests.fakenvml import subprocess_env
from tests.hub import derived_image, login

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]


def device_ids(container):
    requests_ = container.attrs["HostConfig"].get("DeviceRequests") or []
    return [uuid for request in requests_ for uuid in request["DeviceIDs"]]


@pytest.fixture(scope="module")
def cuda13_image(docker_client):
    """The test image, labelled as built for CUDA 13.0."""
    tag = "jupyter-gpu-meter/notebook:test-cuda13"
    with derived_image(docker_client, tag, "LABEL jupyter-gpu-meter.cuda-version=13.0"):
        yield tag


def test_a_failed_start_frees_its_gpu(make_hub):
    hub = make_hub(
        "1",
        **{
            "GPUDockerSpawner.profile_list": [
                {"display_name": "Broken", "slug": "broken", "gpus": 1, "image": "no/such:image"},
                {"display_name": "Works", "slug": "works", "gpus": 1},
            ]
        },
    )
    failed = hub.start_server("ada", {"profile": "broken"})
    assert failed.status_code == 500
    assert hub.server_model("ada") is None
    assert hub.gpus_held() == {}
    assert hub.start_server("bob", {"profile": "works"}).status_code in (201, 202)
    assert len(hub.gpus_held()["bob/"]) == 1


def test_a_kept_container_is_recreated_for_every_run(make_hub):
    hub = make_hub("2", **{"GPUDockerSpawner.remove": False})
    hub.start_server("ada", {"gpus": 1})
    (first,) = hub.gpus_held()["ada/"]
    kept_id = hub.container_of("ada").id
    hub.stop_server("ada")
    assert hub.gpus_held() == {}  # stopped but kept: holds nothing
    hub.start_server("bob", {"gpus": 1})
    assert hub.gpus_held()["bob/"] == [first]

    hub.start_server("ada", {"gpus": 1})
    container = hub.container_of("ada")
    (second,) = hub.gpus_held()["ada/"]
    assert second != first
    assert device_ids(container) == [second]
    assert container.id != kept_id
    assert hub.seen_inside("ada")["nvidia_visible_devices"] == second
    # the same GPU again: still a new container (one container, one metered run)
    hub.stop_server("ada")
    assert len(hub.containers(all=True)) == 2  # ada's stopped one is kept
    hub.start_server("ada", {"gpus": 1})
    assert hub.gpus_held()["ada/"] == [second]
    assert hub.container_of("ada").id != container.id


def test_gpus_from_nvml_and_an_image_the_driver_cannot_run(
    make_hub, fake_nvml, fake_nvml_lib, cuda13_image
):
    fake_nvml.set_driver("550.54.15")
    fake_nvml.add_gpu(name="NVIDIA H100 80GB HBM3")
    fake_nvml.add_gpu(name="NVIDIA H100 80GB HBM3")
    fake_nvml.set_lost(1)
    fake_nvml.write()
    hub = make_hub(
        None,
        env=subprocess_env(fake_nvml_lib, fake_nvml.state_path),
        **{
            "GPUDockerSpawner.profile_list": [
                {"display_name": "CUDA 12", "slug": "cuda12", "gpus": 1},
                {"display_name": "CUDA 13", "slug": "cuda13", "gpus": 1, "image": cuda13_image},
            ]
        },
    )
    refused = hub.start_server("ada", {"profile": "cuda13"})
    assert refused.status_code == 500
    assert refused.json()["message"] == (
        f"image {cuda13_image}: built for CUDA 13.0, which needs an NVIDIA driver >= 580; "
        "this host has 550.54.15. Upgrade the driver or use an image for an older CUDA."
    )
    # the healthy GPU NVML reports is given out; the lost one never is
    assert hub.start_server("ada", {"profile": "cuda12"}).status_code in (201, 202)
    assert hub.gpus_held()["ada/"] == [fake_nvml.uuids[0]]
    refused = hub.start_server("bob", {"gpus": 1})
    assert refused.status_code == 503
    assert refused.json()["message"] == ("no free NVIDIA H100 80GB HBM3: 0 of 2 free (1 unhealthy)")


def test_a_docker_socket_bind_is_refused_and_leaves_no_container_and_no_gpu_held(make_hub):
    socket = {"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}}
    hub = make_hub("1", **{"GPUDockerSpawner.extra_host_config": {"binds": socket}})
    refused = hub.start_server("ada", {"gpus": 1})
    assert refused.status_code == 500
    message = refused.json()["message"]
    assert "it would get a bind of the Docker engine's socket or data" in message
    assert "(/var/run/docker.sock) [docker_engine]" in message
    assert "c.GPUDockerSpawner.allow_unsafe_settings" in message
    assert hub.server_model("ada") is None
    assert hub.containers(all=True) == []
    # the spawn page counts GPUs held by containers and by starts in progress: none is
    form = login(hub, "bob").get(hub.url + "/hub/spawn", timeout=30).text
    assert "1 of 1 free" in " ".join(html.unescape(re.sub(r"<[^>]+>", " ", form)).split())
