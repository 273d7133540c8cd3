"""Users keep their work: the home volume, end to end on a real hub and Docker engine.

Each test writes files as the notebook user inside a real server, then takes
the server away the way it happens in production (a stop, the meter's idle
stop, a budget stop, a hub restart, a new image or profile) and looks for the
files in the next server.
"""

import os

import pytest

import docker
from jupyter_gpu_meter import homes, labels
from jupyter_gpu_meter.clock import utcnow
from tests.hub import derived_image
from tests.metering import closed_session, give_money_budget, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

HOME = "/home/jovyan"
FAST = {"Policies.interval": 1.0, "GPUSampler.interval": 0.5}


def run_as_user(container, script: str) -> str:
    """Run `script` in the notebook container as its (non-root) notebook user; its output."""
    result = container.exec_run(["sh", "-ec", script])
    assert result.exit_code == 0, result.output.decode(errors="replace")
    return result.output.decode()


def write_work(container, text: str) -> None:
    run_as_user(
        container,
        f"echo '{text}' > {HOME}/work.txt && mkdir -p {HOME}/.local/lib "
        f"&& echo pkg > {HOME}/.local/lib/installed.txt",
    )


def read_work(container) -> str:
    return run_as_user(
        container, f"cat {HOME}/work.txt {HOME}/.local/lib/installed.txt; stat -c '%u' {HOME}"
    )


def test_work_survives_an_idle_stop_a_new_profile_a_hub_restart_and_a_new_image(
    make_hub, docker_client
):
    hub = make_hub("1", meter=True, **FAST, **{"Policies.gpu_idle_timeout": 4})
    hub.start_server("ada", {"gpus": 1})
    first = hub.container_of("ada")
    write_work(first, "epoch 3 of 10")

    # the meter stops the idle GPU server; the container is removed with it
    wait_until(lambda: hub.server_model("ada") is None, 40, "the idle stop of ada's server")
    assert closed_session(hub, first.id, timeout=20).end_reason.startswith("stopped: GPUs idle")
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(first.id)

    # a CPU-only server this time: the same home
    assert hub.start_server("ada", {"gpus": 0}).status_code in (201, 202)
    second = hub.container_of("ada")
    assert second.id != first.id
    assert read_work(second) == "epoch 3 of 10\npkg\n1000\n"
    run_as_user(second, f"echo 'epoch 4' >> {HOME}/work.txt")

    # the hub restarts while the server runs: the server keeps its home...
    hub.restart()
    assert "epoch 4" in run_as_user(hub.container_of("ada"), f"cat {HOME}/work.txt")
    hub.stop_server("ada")

    # ...and a new image (the admin upgrades it) mounts the same home
    with derived_image(docker_client, f"{hub.prefix}newer-image", "LABEL upgraded=yes") as newer:
        hub.restart(**{"GPUDockerSpawner.image": newer})
        hub.start_server("ada", {"gpus": 0})
        third = hub.container_of("ada")
        assert third.image.tags == [f"{newer}:latest"]
        assert run_as_user(third, f"cat {HOME}/work.txt") == "epoch 3 of 10\nepoch 4\n"
        hub.cleanup()  # its containers go before their image


def test_work_survives_a_budget_stop(make_hub):
    model = "NVIDIA H100 80GB HBM3"
    hub = make_hub(
        f"1x{model}",
        meter=True,
        **FAST,
        **{
            "Pricing.prices": {model: "3600"},  # 1 USD a second
            "Budgets.grace": 1,
            "Budgets.minimum_start": 1,
        },
    )
    hub.start_server("ada", {"gpus": 0})
    write_work(hub.container_of("ada"), "before the budget")
    hub.stop_server("ada")
    give_money_budget(hub, "ada", "6")
    hub.start_server("ada", {"gpus": 1})
    gpu_server = hub.container_of("ada")
    wait_until(lambda: hub.server_model("ada") is None, 60, "the budget policy to stop ada")
    assert closed_session(hub, gpu_server.id, timeout=20).end_reason.startswith(
        "stopped: budget used up"
    )
    # CPU-only servers cost nothing here: ada gets back to her files
    hub.start_server("ada", {"gpus": 0})
    assert read_work(hub.container_of("ada")) == "before the budget\npkg\n1000\n"


def test_each_user_sees_only_their_own_home(make_hub, docker_client):
    hub = make_hub("2")
    # user names that need escaping in a volume name, and one that differs only by it
    users = ["ada", "ada_5f", "b@b.example", "ada_"]
    for user in users:
        hub.start_server(user, {"gpus": 0})
        run_as_user(hub.container_of(user), f"echo 'mine: {user}' > {HOME}/owner.txt")
    volume_names = set()
    for user in users:
        container = hub.container_of(user)
        assert run_as_user(container, f"cat {HOME}/owner.txt") == f"mine: {user}\n"
        (mount,) = [m for m in container.attrs["Mounts"] if m["Destination"] == HOME]
        assert mount["Type"] == "volume" and mount["RW"]
        volume = docker_client.volumes.get(mount["Name"])
        assert volume.attrs["Labels"][homes.VOLUME_KIND] == "home"
        assert volume.attrs["Labels"][labels.USER] == user
        assert mount["Name"] == hub.home_of(user)
        volume_names.add(mount["Name"])
    assert len(volume_names) == len(users)

    for user in users:
        hub.stop_server(user)
    # no option of the user's names a volume...
    refused = hub.start_server("ada", {"gpus": 0, "volumes": {hub.home_of("ada_5f"): "/x"}})
    assert refused.status_code == 400
    assert "unknown option(s) 'volumes'" in refused.json()["message"]
    # ...and an admin's volume template that would hand ada another user's home is refused
    hub.restart(**{"GPUDockerSpawner.volumes": {hub.home_of("ada_5f"): "/mnt/other"}})
    refused = hub.start_server("ada", {"gpus": 0})
    assert refused.status_code == 500
    assert refused.json()["message"] == (
        f"the volume {hub.home_of('ada_5f')} is the home of user 'ada_5f'; "
        "it cannot be mounted into a server of 'ada'"
    )
    assert not hub.containers(all=True)
    # nor mounted twice for its owner
    refused = hub.start_server("ada_5f", {"gpus": 0})
    assert refused.status_code == 500
    assert refused.json()["message"] == (
        f"c.DockerSpawner.volumes mounts the user's home volume {hub.home_of('ada_5f')} at "
        "/mnt/other; it is mounted at /home/jovyan already: remove it from c.DockerSpawner.volumes"
    )


def test_an_admin_volume_at_the_home_is_refused_and_homes_can_be_turned_off(make_hub):
    hub = make_hub("1", **{"GPUDockerSpawner.volumes": {"/srv/shared": HOME}})
    refused = hub.start_server("ada", {"gpus": 0})
    assert refused.status_code == 500
    assert refused.json()["message"].startswith(
        f"c.DockerSpawner.volumes mounts /srv/shared at {HOME}, where the user's home goes:"
    )

    hub.restart(**{"HomeVolumes.enabled": False, "GPUDockerSpawner.volumes": {}})
    hub.start_server("bob", {"gpus": 0})
    container = hub.container_of("bob")
    assert [m for m in container.attrs["Mounts"] if m["Destination"] == HOME] == []
    write_work(container, "gone at the stop")
    hub.stop_server("bob")
    hub.start_server("bob", {"gpus": 0})
    result = hub.container_of("bob").exec_run(["cat", f"{HOME}/work.txt"])
    assert result.exit_code != 0  # without a home nothing is kept: that is what "off" means
    assert not any(v.name == hub.home_of("bob") for v in hub.volumes())


def test_a_home_of_another_hub_is_not_mounted(make_hub, docker_client):
    hub = make_hub("1")
    # another hub on this engine made a home of this name for its own "ada"
    docker_client.volumes.create(
        hub.home_of("ada"),
        labels=homes.volume_labels(
            homes.HOME, user="ada", hub_id="hub-elsewhere", created=utcnow()
        ),
    )
    refused = hub.start_server("ada", {"gpus": 0})
    assert refused.status_code == 500
    assert refused.json()["message"] == (
        f"your home cannot be mounted: the volume {hub.home_of('ada')} is the home of user "
        "'ada' on hub 'hub-elsewhere', not this user's home here: give each hub its own names "
        "with '{hub_id}' in c.HomeVolumes.name_template"
    )


def test_the_first_start_gives_the_notebook_user_a_writable_home_in_any_image(
    make_hub, docker_client
):
    # an image without the notebook user's home folder: Docker has nothing to copy in
    bare = f"jgm-test-{os.getpid()}-no-home"
    with derived_image(docker_client, bare, "USER root", f"RUN rm -rf {HOME}", "USER 1000"):
        hub = make_hub("1", **{"GPUDockerSpawner.image": bare})
        hub.start_server("ada", {"gpus": 0})
        assert read_work_after_write(hub.container_of("ada")) == "1000\n"
        hub.cleanup()


def read_work_after_write(container) -> str:
    return run_as_user(container, f"touch {HOME}/new && stat -c '%u' {HOME}/new")
