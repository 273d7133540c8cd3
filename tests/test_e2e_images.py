"""Image versions end to end: a real hub, Docker and the meter.

``test_allowed_image`` is DockerSpawner 14's own test of ``allowed_images``
(``tests/test_dockerspawner.py::test_allowed_image`` in jupyterhub/dockerspawner,
at commit 785a752), ported to run against GPUDockerSpawner in a real hub: the
same nine cases (a dict, a list, a callable, none, ``"*"``; allowed and refused
choices), with two local tags of the test image in place of
``quay.io/jupyterhub/singleuser:4.0`` and ``:4`` (no registry is reachable
here). Instead of setting ``user.spawner.allowed_images`` in the hub's process,
each group of cases gets a hub configured with it; instead of
``user.spawner.image``, what Docker says the container runs is checked. Four of
these cases (an allowed name or reference chosen) failed before GPUDockerSpawner
honoured ``allowed_images``.

The rest is ours: the name on the container, in the notebook's environment, in
the ledger, the API, the CSV and the pages; a 400 listing the names; the
memlock the engine grants, chosen without any ulimit configuration.
"""

import csv
import io
import secrets

import pytest
import requests

from jupyter_gpu_meter import labels
from jupyter_gpu_meter.ulimits import parse_proc_limits
from tests.hub import IMAGE, derived_image, login
from tests.metering import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]


@pytest.fixture(scope="module")
def tags(docker_client):
    """Two more names of the test image, as the upstream test's two singleuser tags."""
    repo = f"jgm-images-{secrets.token_hex(3)}/singleuser"
    image = docker_client.images.get(IMAGE)
    for tag in ("4.0", "4"):
        image.tag(repo, tag)
    yield {"4.0": f"{repo}:4.0", "4": f"{repo}:4", "3.0": f"{repo}:3.0"}
    for tag in ("4.0", "4"):
        docker_client.images.remove(f"{repo}:{tag}")  # the tag only: the image has others


def upstream_cases(tags):
    """allowed_images -> [(image asked for, ok)], as the upstream parametrization."""
    return {
        "dict": ({"4.0": tags["4.0"], "4": tags["4"]}, [("4.0", True), (None, True)]),
        "list": ([tags["4"], tags["4.0"]], [("not-in-list", False), (tags["4"], True)]),
        "callable": (None, [(tags["4.0"], True), (tags["3.0"], False)]),
        "none": ({}, [("DEFAULT", False), (None, True)]),
        "star": ("*", [(tags["4"], True)]),
    }


@pytest.mark.parametrize("kind", ["dict", "list", "callable", "none", "star"])
def test_allowed_image(make_hub, tags, tmp_path, kind):
    allowed_images, cases = upstream_cases(tags)[kind]
    if kind == "callable":  # a callable cannot travel as JSON: a config file of its own
        base = tmp_path / "allowed_images_callable.py"
        base.write_text(
            "def allowed_images_callable(*_):\n"
            f"    return [{tags['4.0']!r}, {tags['4']!r}]\n\n"
            "get_config().GPUDockerSpawner.allowed_images = allowed_images_callable\n"
        )
        hub = make_hub("1", base_config=str(base))
    else:
        hub = make_hub("1", **{"GPUDockerSpawner.allowed_images": allowed_images})
    for number, (image, ok) in enumerate(cases):
        user = f"user{number}"  # upstream's fresh user: JupyterHub reuses a user's last options
        if image == "DEFAULT":
            image = IMAGE
        response = hub.start_server(user, {"image": image} if image else None)
        if not ok:
            assert response.status_code == 400, response.text
            continue
        assert response.status_code in (201, 202), response.text
        assert hub.server_model(user)["ready"], hub.logs()[-3000:]
        if image is None:
            expected = IMAGE
        elif isinstance(allowed_images, dict) and kind != "star":
            expected = allowed_images[image]
        else:
            expected = image
        container = hub.container_of(user)
        assert container.attrs["Config"]["Image"] == expected
        hub.stop_server(user)


# --- ours: the name everywhere, the 400, the engine's memlock ----------------------------

NAMES = ("Notebook 4.0", "Notebook 4")


def meter_get(hub, token, path):
    response = requests.get(
        hub.meter_url + path, headers={"Authorization": f"token {token}"}, timeout=30
    )
    assert response.status_code == 200, (response.status_code, response.text)
    return response


def test_a_chosen_image_runs_and_its_name_is_recorded_and_shown(make_hub, tags, docker_client):
    allowed = {NAMES[0]: tags["4.0"], NAMES[1]: tags["4"]}
    hub = make_hub(
        "1",
        meter=True,
        **{
            "GPUDockerSpawner.allowed_images": allowed,
            "JupyterHub.load_roles": [  # test-admin may create ada's token
                {"name": "test-tokens", "scopes": ["tokens"], "services": ["test-admin"]}
            ],
        },
    )

    # the spawn form offers the names
    form = login(hub, "ada").get(hub.url + "/hub/spawn/ada", timeout=30).text
    assert 'name="image"' in form and all(f'value="{name}"' in form for name in NAMES)

    refused = hub.start_server("ada", {"image": tags["4"]})  # a reference is not a name
    assert refused.status_code == 400
    assert refused.json()["message"] == (
        f"unknown image {tags['4']!r}; allowed: Notebook 4.0, Notebook 4"
    )
    assert hub.server_model("ada") is None

    assert hub.start_server("ada", {"gpus": 1, "image": "Notebook 4"}).status_code in (201, 202)
    container = hub.container_of("ada")
    assert container.attrs["Config"]["Image"] == tags["4"]
    assert container.labels[labels.IMAGE] == "Notebook 4"
    env = container.exec_run(["printenv", "JUPYTER_GPU_METER_IMAGE"]).output.decode().strip()
    assert env == "Notebook 4"

    # no ulimit configured: memlock is the most this engine grants, and the hub says so
    engine = parse_proc_limits(
        docker_client.containers.run(
            IMAGE, ["/proc/self/limits"], entrypoint=["cat"], network_mode="none", remove=True
        ).decode()
    )
    limits = {u["Name"]: u["Hard"] for u in container.attrs["HostConfig"]["Ulimits"]}
    assert limits == {"memlock": engine["memlock"], "stack": 67108864}
    assert "grants locked memory up to" in hub.logs()

    token = hub.user_token("ada")
    sessions = wait_until(
        lambda: meter_get(hub, token, "api/usage").json()["running"],
        what="the meter records ada's session",
    )
    assert [s["image"] for s in sessions] == ["Notebook 4"]
    (line,) = csv.DictReader(io.StringIO(meter_get(hub, token, "api/export.csv").text))
    assert line["image"] == "Notebook 4"
    page = login(hub, "ada").get(hub.meter_url, timeout=30).text
    assert 'gpu-meter-image" title="Image">Notebook 4<' in page
    admin_page = login(hub, "admin").get(hub.meter_url + "admin", timeout=30).text
    assert 'gpu-meter-image" title="Image">Notebook 4<' in admin_page

    # the next run without an image runs the configured one, not the last one chosen
    hub.stop_server("ada")
    assert hub.start_server("ada", {"gpus": 0}).status_code in (201, 202)
    container = hub.container_of("ada")
    assert container.attrs["Config"]["Image"] == IMAGE
    assert container.labels[labels.IMAGE] == IMAGE  # no name of its own: its reference


def test_a_memlock_the_engine_cannot_grant_is_refused_saying_what_to_set(make_hub, docker_client):
    engine = parse_proc_limits(
        docker_client.containers.run(
            IMAGE, ["/proc/self/limits"], entrypoint=["cat"], network_mode="none", remove=True
        ).decode()
    )
    if engine["memlock"] == -1:
        pytest.skip("this engine grants unlimited locked memory: no value exceeds it")
    hub = make_hub("1", **{"GPUDockerSpawner.ulimits": {"memlock": -1, "stack": 67108864}})
    refused = hub.start_server("ada", {"gpus": 0})
    assert refused.status_code == 500
    assert refused.json()["message"].startswith(
        "c.GPUDockerSpawner.ulimits['memlock'] = unlimited (-1) is more than this Docker engine "
        f"grants: its hard limit is {engine['memlock']}"
    )
    assert hub.containers(all=True) == []


def test_an_image_the_engine_cannot_be_probed_with_starts_with_the_engines_own_memlock(
    make_hub, docker_client
):
    tag = f"jgm-images-{secrets.token_hex(3)}/no-cat:test"
    with derived_image(docker_client, tag, "USER root", "RUN rm /usr/bin/cat", "USER 1000"):
        hub = make_hub("1", **{"GPUDockerSpawner.image": tag})
        assert hub.start_server("ada", {"gpus": 0}).status_code in (201, 202)
        assert hub.server_model("ada")["ready"]
        assert f"Could not read the Docker engine's ulimits with a container of {tag}" in (
            hub.logs()
        )
        container = hub.container_of("ada")
        limits = {u["Name"]: u["Hard"] for u in container.attrs["HostConfig"]["Ulimits"]}
        assert limits == {"stack": 67108864}  # memlock: the engine's own, as Docker gives it
        hub.cleanup()  # before the image goes
