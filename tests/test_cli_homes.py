"""jupyter-gpu-meter homes ... and snapshots ..., run as an admin runs them on the hub's host."""

import json
import secrets

import pytest

from jupyter_gpu_meter import homes
from tests.hub import IMAGE
from tests.test_cli import cli
from tests.test_snapshots import CHANGE, POPULATE, manifest, run

pytestmark = pytest.mark.slow


@pytest.fixture
def hub(tmp_path, docker_client):
    """A hub's config (its own home names) and a home of ada's with files in it."""
    api = docker_client.api
    prefix = f"jgm-clihomes-{secrets.token_hex(4)}"
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        f"c.HomeVolumes.name_template = {prefix + '-{username}'!r}\n"
        f"c.GPUDockerSpawner.image = {IMAGE!r}\n"
        'c.HubIdentity.hub_id = "hub-cli"\n'
    )
    home = f"{prefix}-ada"
    homes.ensure_home(
        api,
        home,
        user="ada",
        hub_id="hub-cli",
        owner="1000:100",
        image=IMAGE,
        mount_path="/home/jovyan",
    )
    run(api, home, POPULATE)
    yield {"config": str(config), "home": home, "api": api}
    for volume in api.volumes().get("Volumes") or []:
        if volume["Name"].startswith(prefix):
            api.remove_volume(volume["Name"], force=True)


def command(hub, *args, check=True):
    return cli(*args, "--config", hub["config"], check=check)


def as_json(result):
    return json.loads(result.stdout)


def test_an_admin_takes_restores_deletes_and_removes(hub):
    api, home = hub["api"], hub["home"]
    before = manifest(api, home)
    (taken,) = as_json(
        command(hub, "snapshots", "take", "--user", "ada", "--label", "nightly", "--format", "json")
    )
    assert (taken["user"], taken["label"], taken["home"]) == ("ada", "nightly", home)
    table = command(hub, "snapshots", "list").stdout
    assert table.splitlines()[0].split() == [
        "user",
        "id",
        "created_at",
        "label",
        "size_bytes",
        "volume",
    ]
    assert taken["id"] in table

    run(api, home, CHANGE)
    refused = command(hub, "snapshots", "restore", taken["id"], "--user", "ada", check=False)
    assert refused.returncode == 2 and "add --yes" in refused.stderr
    wrong = command(hub, "snapshots", "restore", taken["id"], "--user", "bob", "--yes", check=False)
    assert wrong.returncode == 2 and "bob has no snapshots" in wrong.stderr
    restored = command(hub, "snapshots", "restore", taken["id"], "--user", "ada", "--yes")
    assert restored.stdout == f"restored snapshot {taken['id']} into the home of ada\n"
    assert manifest(api, home) == before

    (listed,) = as_json(command(hub, "homes", "list", "--format", "json"))
    assert (listed["user"], listed["volume"], listed["snapshots"]) == ("ada", home, 1)
    refused = command(hub, "homes", "remove", "ada", check=False)
    assert refused.returncode == 2 and "add --yes" in refused.stderr
    removed = command(hub, "homes", "remove", "ada", "--yes")
    assert removed.stdout == f"removed the home of ada ({home})\n"
    assert as_json(command(hub, "homes", "list", "--format", "json")) == []
    # the snapshot stays until deleted
    deleted = command(hub, "snapshots", "delete", taken["id"], "--user", "ada")
    assert deleted.stdout == f"deleted snapshot {taken['id']} of ada\n"
    assert as_json(command(hub, "snapshots", "list", "--format", "json")) == []


def test_commands_say_what_they_need(hub):
    for args, message in (
        (("snapshots", "take"), "say whose: --user NAME"),
        (("snapshots", "delete", "--user", "ada"), "give id (one)"),
        (("homes", "remove"), "give user (one)"),
        (("homes", "remove", "nobody", "--yes"), "nobody has no home on this hub"),
        (("snapshots", "take", "--user", "ada", "--label", "<x>"), "snapshot label"),
        (("snapshots", "frobnicate"), "'frobnicate' is not a command here"),
    ):
        result = command(hub, *args, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
