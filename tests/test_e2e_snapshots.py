"""Snapshots end to end: the meter's API and the spawner on a real hub and Docker engine.

A user takes a snapshot through the meter, changes a file in the notebook,
stops, restores, starts: the file is back. Starting from a snapshot restores
it first, and only once nothing else refuses the start; another user's
snapshot, or one that does not exist, is a 400; a start waits for a restore at work.
"""

import pytest
import requests

from jupyter_gpu_meter import homes, labels, snapshots
from tests.hub import IMAGE, login, post_form
from tests.test_e2e_homes import HOME, run_as_user
from tests.test_e2e_spawn_form import text

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]


def meter(hub, token, method, path, **kwargs):
    return requests.request(
        method,
        hub.meter_url + path,
        headers={"Authorization": f"token {token}"},
        timeout=120,
        **kwargs,
    )


def test_a_snapshot_taken_through_the_meter_brings_the_files_back(make_hub, docker_client):
    hub = make_hub("1", meter=True)
    hub.start_server("ada", {"gpus": 0})
    run_as_user(hub.container_of("ada"), f"echo 'epoch 3' > {HOME}/work.txt")
    ada = hub.user_token("ada")

    # taken while the server runs
    taken = meter(hub, ada, "POST", "api/snapshots", json={"label": "epoch 3"})
    assert taken.status_code == 201, taken.text
    snapshot = taken.json()["snapshot"]
    assert snapshot["label"] == "epoch 3" and snapshot["home"] == hub.home_of("ada")
    run_as_user(hub.container_of("ada"), f"echo 'epoch 4, broken' > {HOME}/work.txt")

    restore = f"api/snapshots/{snapshot['id']}/restore"
    busy = meter(hub, ada, "POST", restore, json={"confirm": True})
    assert busy.status_code == 409 and "stop the server first" in busy.json()["message"]
    hub.stop_server("ada")
    restored = meter(hub, ada, "POST", restore, json={"confirm": True})
    assert restored.status_code == 200, restored.text
    hub.start_server("ada", {"gpus": 0})
    assert run_as_user(hub.container_of("ada"), f"cat {HOME}/work.txt") == "epoch 3\n"

    # starting from the snapshot on the spawn page restores it first
    run_as_user(hub.container_of("ada"), f"echo 'epoch 5, broken' > {HOME}/work.txt")
    hub.stop_server("ada")
    browser = login(hub, "ada")
    form = text(browser.get(hub.url + "/hub/spawn", timeout=30).text)
    assert "Start from my home as it is" in form
    assert f"snapshot {snapshot['id']} “epoch 3” (restores it: replaces the home)" in form
    started = post_form(browser, hub.url + "/hub/spawn", {"gpus": "0", "snapshot": snapshot["id"]})
    assert started.ok, started.text
    assert hub.wait_for("ada")
    assert run_as_user(hub.container_of("ada"), f"cat {HOME}/work.txt") == "epoch 3\n"
    # a start without options reuses the last ones, but never restores the snapshot again
    run_as_user(hub.container_of("ada"), f"echo 'epoch 6' > {HOME}/work.txt")
    hub.stop_server("ada")
    assert hub.start_server("ada", {}).status_code in (201, 202)
    assert run_as_user(hub.container_of("ada"), f"cat {HOME}/work.txt") == "epoch 6\n"
    assert hub.server_model("ada")["user_options"] == {"gpus": "0"}
    hub.stop_server("ada")

    # a start from the snapshot that the hub refuses (no free GPU) restores nothing:
    # the home is still at epoch 6 at the end
    hub.start_server("carl", {"gpus": 1})
    no_gpu = hub.start_server("ada", {"gpus": 1, "snapshot": snapshot["id"]})
    assert no_gpu.status_code == 503, no_gpu.text
    hub.stop_server("carl")

    # bob cannot start from ada's snapshot, nor reach it through the meter
    refused = hub.start_server("bob", {"gpus": 0, "snapshot": snapshot["id"]})
    assert refused.status_code == 400
    assert refused.json()["message"].endswith("bob has no snapshots")
    bob = hub.user_token("bob")
    assert meter(hub, bob, "GET", "api/snapshots?user=ada").status_code == 403
    assert meter(hub, bob, "POST", restore, json={"confirm": True}).status_code == 404

    # a start waits while a restore of the home is at work
    home = hub.home_of("ada")
    docker_client.volumes.create(
        snapshots.marker_volume_name(home),
        labels={labels.USER: "ada", snapshots.RESTORING: home},
    )
    restorer = docker_client.containers.run(
        IMAGE,
        ["sleep", "300"],
        name=f"{hub.prefix}restorer",
        labels={homes.HELPER: snapshots.RESTORE, snapshots.HELPER_TARGET: home},
        detach=True,
    )
    waiting = hub.start_server("ada", {"gpus": 0})
    assert waiting.status_code == 409
    assert waiting.json()["message"] == (
        "a restore of your home is in progress: start again when it is done"
    )
    restorer.remove(force=True)
    # the restore's helper died before its commit: the next start cleans up and goes on
    assert hub.start_server("ada", {"gpus": 0}).status_code in (201, 202)
    assert run_as_user(hub.container_of("ada"), f"cat {HOME}/work.txt") == "epoch 6\n"
    assert snapshots.marker_volume_name(home) not in [v.name for v in hub.volumes()]
