"""Project templates through a real hub: chosen at spawn, copied once, never overwriting.

Needs the notebook image with the JupyterLab extension and docker/templates
(scripts/build-images); the admin's template comes from a host folder.
"""

import pytest
import requests

from tests.hub import login

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

HOME = "/home/jovyan"


def run(container, *command) -> str:
    result = container.exec_run(list(command))
    assert result.exit_code == 0, result.output
    return result.output.decode()


@pytest.fixture
def admin_templates(tmp_path):
    """A host folder with one template of the admin's, readable by the notebook user."""
    folder = tmp_path / "templates" / "team-starter"
    folder.mkdir(parents=True)
    (folder / "template.json").write_text('{"name": "Team starter", "description": "Ours"}')
    (folder / "README.md").write_text("# Team starter\n")
    for path in (tmp_path, tmp_path / "templates", folder):
        path.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder.parent


def test_a_template_is_copied_into_the_home_once_and_never_over_the_users_files(
    admin_templates, make_hub
):
    hub = make_hub("1", **{"Templates.directories": [str(admin_templates)]})
    # offered on the spawn form
    form = login(hub, "ada").get(hub.url + "/hub/spawn", timeout=30).text
    assert '<option value="ddp-on-n-gpus" title=' in form
    assert '<option value="team-starter" title="Ours">Team starter (~/team-starter)' in form

    # an unknown one: a 400 that lists the slugs, and no server
    refused = hub.start_server("ada", {"gpus": 0, "template": "sdxl"})
    assert refused.status_code == 400
    assert refused.json()["message"] == (
        "unknown template 'sdxl'; available: ddp-on-n-gpus, lora-fine-tune, yolo-detector, "
        "stable-diffusion, team-starter"
    )
    assert hub.server_model("ada") is None

    # chosen at the start: in ~/ddp-on-n-gpus when the server is ready
    assert hub.start_server("ada", {"gpus": 0, "template": "ddp-on-n-gpus"}).status_code in (
        201,
        202,
    )
    assert hub.wait_for("ada")
    container = hub.container_of("ada")
    assert "JUPYTER_GPU_METER_TEMPLATE=ddp-on-n-gpus" in container.attrs["Config"]["Env"]
    assert run(container, "ls", f"{HOME}/ddp-on-n-gpus").split() == [
        "README.md",
        "ddp.ipynb",
        "train_ddp.py",
    ]
    # the user changes one file and deletes another
    run(container, "sh", "-c", f"echo mine > {HOME}/ddp-on-n-gpus/README.md")
    run(container, "rm", f"{HOME}/ddp-on-n-gpus/ddp.ipynb")
    # the admin's template is mounted read-only
    denied = container.exec_run(["touch", "/opt/jupyter-gpu-meter/templates-extra/team-starter/x"])
    assert denied.exit_code != 0 and b"Read-only file system" in denied.output
    hub.stop_server("ada")

    # started again with the same template: the user's files as they left them
    assert hub.start_server("ada", {"gpus": 0, "template": "ddp-on-n-gpus"}).status_code in (
        201,
        202,
    )
    assert hub.wait_for("ada")
    container = hub.container_of("ada")
    assert run(container, "cat", f"{HOME}/ddp-on-n-gpus/README.md") == "mine\n"
    assert run(container, "ls", f"{HOME}/ddp-on-n-gpus").split() == ["README.md", "train_ddp.py"]

    # from the launcher: the list, and a copy of the admin's template on demand
    token = {"Authorization": "token " + hub.user_token("ada")}
    listed = requests.get(hub.url + "/user/ada/gpu-meter/templates", headers=token, timeout=30)
    assert listed.ok, listed.text
    assert [t["slug"] for t in listed.json()["templates"]] == [
        "ddp-on-n-gpus",
        "lora-fine-tune",
        "stable-diffusion",
        "yolo-detector",
        "team-starter",
    ]
    url = hub.url + "/user/ada/gpu-meter/templates/"
    copied = requests.post(url + "team-starter", headers=token, timeout=30)
    assert copied.ok, copied.text
    assert copied.json() == {
        "path": "team-starter",
        "readme": "team-starter/README.md",
        "copied": ["team-starter/README.md"],
        "kept": [],
    }
    assert run(container, "cat", f"{HOME}/team-starter/README.md") == "# Team starter\n"
    # the launcher's copy brings back what is missing and keeps what the user changed
    again = requests.post(url + "ddp-on-n-gpus", headers=token, timeout=30).json()
    assert again["copied"] == ["ddp-on-n-gpus/ddp.ipynb"]
    assert sorted(again["kept"]) == ["ddp-on-n-gpus/README.md", "ddp-on-n-gpus/train_ddp.py"]
    missing = requests.post(url + "nope", headers=token, timeout=30)
    assert missing.status_code == 404
    assert "no template 'nope'; there are: ddp-on-n-gpus" in missing.json()["message"]
