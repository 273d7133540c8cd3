"""Datasets through a real hub: defined by the admin, chosen by a user, mounted read-only."""

import secrets

import docker.errors
import pytest

from tests.hub import login, post_form
from tests.test_e2e_spawn_form import text

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]


@pytest.fixture
def demo(tmp_path, docker_client):
    """A host folder with one file, and the name of the dataset volume the hub makes of it."""
    folder = tmp_path / "data" / "demo"
    folder.mkdir(parents=True)
    (folder / "hello.txt").write_text("hello from the dataset\n")
    for path in (tmp_path, tmp_path / "data", folder):
        path.chmod(0o755)
    (folder / "hello.txt").chmod(0o644)
    volume = f"jgm-test-ds-{secrets.token_hex(3)}-demo"
    yield folder, volume
    # requested before make_hub, so torn down after the hub and its containers
    try:
        docker_client.volumes.get(volume).remove(force=True)
    except docker.errors.NotFound:
        pass  # never made: the test failed before a start


def test_a_user_mounts_a_dataset_read_only_from_the_form_and_the_api(demo, make_hub):
    folder, volume = demo
    hub = make_hub(
        "1",
        **{
            "Datasets.definitions": {
                "demo": {"path": str(folder), "volume": volume, "description": "Demo <data>"},
                "other": {"volume": "never-used-by-this-test"},
            }
        },
    )
    # the spawn form offers each dataset with its description, escaped
    browser = login(hub, "ada")
    form = browser.get(hub.url + "/hub/spawn", timeout=30).text
    assert 'type="checkbox" name="datasets" id="dataset-demo"' in form
    assert "Demo &lt;data&gt;" in form
    assert "Datasets (read-only, in /home/jovyan/datasets/<name>) demo — Demo <data>" in text(form)

    # an unknown dataset: a 400 naming the ones that exist, and no server
    refused = hub.start_server("bob", {"gpus": 0, "datasets": ["imagenet"]})
    assert refused.status_code == 400
    assert refused.json()["message"] == "unknown dataset(s) 'imagenet'; available: demo, other"
    assert hub.server_model("bob") is None

    # ticked on the form, with a GPU count
    response = post_form(browser, hub.url + "/hub/spawn", {"gpus": "0", "datasets": "demo"})
    assert response.ok, response.text
    assert hub.wait_for("ada")
    container = hub.container_of("ada")
    read = container.exec_run(["cat", "/home/jovyan/datasets/demo/hello.txt"])
    assert read.exit_code == 0 and read.output == b"hello from the dataset\n"
    write = container.exec_run(["touch", "/home/jovyan/datasets/demo/mine.txt"])
    assert write.exit_code != 0 and b"Read-only file system" in write.output
    assert not (folder / "mine.txt").exists()
    (mount,) = [m for m in container.attrs["Mounts"] if m.get("Name") == volume]
    assert mount["Destination"] == "/home/jovyan/datasets/demo" and mount["RW"] is False
    assert hub.docker.volumes.get(volume).attrs["Labels"]["jupyter-gpu-meter.volume"] == "dataset"
    hub.stop_server("ada")

    # through user_options, with the same volume: made once, used again
    assert hub.start_server("bob", {"gpus": 0, "datasets": ["demo"]}).status_code in (201, 202)
    assert hub.wait_for("bob")
    inside = hub.container_of("bob").exec_run(["ls", "/home/jovyan/datasets"])
    assert inside.output.split() == [b"demo"]

    # an admin's mistake cannot hand bob's home to ada as a dataset
    definitions = {"stolen": {"volume": hub.home_of("bob")}}
    hub.restart(**{"Datasets.definitions": definitions})
    refused = hub.start_server("ada", {"gpus": 0, "datasets": ["stolen"]})
    assert refused.status_code == 500
    assert (
        f"dataset 'stolen': the volume {hub.home_of('bob')} is the home of user 'bob'; "
        "a dataset can never be a user's home or snapshot"
    ) in refused.json()["message"]
    assert hub.server_model("ada") is None


def test_a_bad_definition_stops_the_hub_at_start_with_what_is_allowed(make_hub):
    with pytest.raises(RuntimeError, match=r"the hub exited") as e:
        make_hub(**{"Datasets.definitions": {"demo": {"path": "/var/run/docker.sock"}}})
    assert (
        "c.Datasets.definitions['demo']: 'path' '/var/run/docker.sock' would give notebooks "
        "a bind of the Docker engine's socket or data"
    ) in str(e.value)
