"""Dataset volumes on the real Docker engine: made once, labelled, mounted read-only."""

import secrets

import pytest

from jupyter_gpu_meter import labels
from jupyter_gpu_meter.clock import utcnow
from jupyter_gpu_meter.container import Hardening, enforce_create_kwargs
from jupyter_gpu_meter.datasets import (
    DATASET,
    DATASET_NAME,
    DatasetError,
    add_dataset_mounts,
    ensure_dataset_volume,
    parse_definitions,
)
from jupyter_gpu_meter.homes import HOME, SNAPSHOT, VOLUME_KIND, volume_labels
from tests.hub import IMAGE

pytestmark = [pytest.mark.docker]


@pytest.fixture
def api(docker_client):
    return docker_client.api


@pytest.fixture
def volumes(api):
    """A unique prefix for this test's volumes; every volume named with it is removed after."""
    prefix = f"jgm-test-ds-{secrets.token_hex(3)}-"
    yield prefix
    for volume in api.volumes(filters={"name": prefix}).get("Volumes") or []:
        if volume["Name"].startswith(prefix):
            api.remove_volume(volume["Name"], force=True)


@pytest.fixture
def folder(tmp_path):
    """A host folder with one file, readable by the notebook user (uid 1000)."""
    data = tmp_path / "demo"
    data.mkdir()
    (data / "hello.txt").write_text("hello from the dataset\n")
    for path in (tmp_path, data):
        path.chmod(0o755)
    (data / "hello.txt").chmod(0o644)
    return data


def dataset(name, **definition):
    (found,) = parse_definitions({name: definition})
    return found


def test_a_folder_dataset_is_made_once_with_its_labels_and_options(api, volumes, folder):
    demo = dataset("demo", path=str(folder), volume=volumes + "demo")
    info = ensure_dataset_volume(api, demo)
    assert info["Name"] == volumes + "demo"
    assert info["Driver"] == "local"
    assert info["Options"] == {"type": "none", "o": "bind", "device": str(folder)}
    assert info["Labels"] == {VOLUME_KIND: DATASET, DATASET_NAME: "demo"}
    # the storage meter bills only homes and snapshots: not this one
    assert info["Labels"][VOLUME_KIND] not in (HOME, SNAPSHOT)
    again = ensure_dataset_volume(api, demo)
    assert again["CreatedAt"] == info["CreatedAt"]


def test_a_volume_made_otherwise_is_refused_with_what_to_do(api, volumes, folder, tmp_path):
    demo = dataset("demo", path=str(folder), volume=volumes + "demo")
    ensure_dataset_volume(api, demo)
    other = tmp_path / "other"
    other.mkdir()
    moved = dataset("demo", path=str(other), volume=volumes + "demo")
    with pytest.raises(
        DatasetError, match=r"was made with the driver 'local' and options .*demo"
    ) as e:
        ensure_dataset_volume(api, moved)
    assert f"docker volume rm {volumes}demo" in str(e.value)

    api.create_volume(name=volumes + "plain")
    with pytest.raises(DatasetError, match=r"exists but was not made by the hub for this dataset"):
        ensure_dataset_volume(api, dataset("demo", path=str(folder), volume=volumes + "plain"))
    # another dataset's volume is not this one's either
    with pytest.raises(DatasetError, match=r"not made by the hub for this dataset"):
        ensure_dataset_volume(api, dataset("copy", path=str(folder), volume=volumes + "demo"))


def test_an_existing_volume_must_exist_and_must_not_reach_the_host(api, volumes):
    mnist = dataset("mnist", volume=volumes + "mnist")
    with pytest.raises(DatasetError, match=r"the Docker volume .*mnist does not exist; create it"):
        ensure_dataset_volume(api, mnist)
    assert api.volumes(filters={"name": volumes + "mnist"})["Volumes"] in (None, [])
    api.create_volume(name=volumes + "mnist", labels={"made-by": "admin"})
    assert ensure_dataset_volume(api, mnist)["Name"] == volumes + "mnist"

    api.create_volume(
        name=volumes + "proc",
        driver="local",
        driver_opts={"type": "none", "o": "bind", "device": "/proc"},
    )
    with pytest.raises(
        DatasetError, match=r"binds /proc, which would give notebooks a bind of the host's"
    ):
        ensure_dataset_volume(api, dataset("proc", volume=volumes + "proc"))


@pytest.mark.parametrize("kind", [HOME, SNAPSHOT])
def test_a_dataset_can_never_be_a_users_home_or_snapshot(api, volumes, folder, kind):
    name = volumes + "bob-" + kind
    api.create_volume(
        name=name, labels=volume_labels(kind, user="bob", hub_id="prod", created=utcnow())
    )
    for definition in ({"volume": name}, {"path": str(folder), "volume": name}):
        with pytest.raises(
            DatasetError, match=rf"is the {kind} of user 'bob'; a dataset can never"
        ):
            ensure_dataset_volume(api, dataset("stolen", **definition))


@pytest.mark.slow  # Docker looks for a missing plugin for 15 s before it answers
def test_a_missing_volume_plugin_is_a_clear_error(api, volumes):
    coco = dataset("coco", s3="s3://my-bucket/coco/", volume=volumes + "coco")
    with pytest.raises(
        DatasetError, match=r"could not make the volume .*coco with the driver 'rclone'"
    ):
        ensure_dataset_volume(api, coco)


@pytest.mark.slow
def test_the_notebook_user_reads_a_dataset_and_cannot_write_it(api, volumes, folder):
    """The mounts as the spawner makes them, in a real container with a persistent home."""
    demo = dataset("demo", path=str(folder), volume=volumes + "demo")
    ensure_dataset_volume(api, demo)
    home = volumes + "home"
    api.create_volume(name=home)
    host = add_dataset_mounts(
        api.create_host_config(binds=[f"{home}:/home/jovyan:rw"], network_mode="none"),
        [demo],
        "/home/jovyan",
    )
    kwargs = enforce_create_kwargs(
        {"image": IMAGE, "host_config": host},
        gpu_uuids=[],
        container_labels={labels.USER: "ada"},
        hardening=Hardening(read_only_volumes=frozenset({demo.volume})),
    )
    script = (
        "cat ~/datasets/demo/hello.txt; "
        "touch ~/datasets/demo/x 2>&1 || echo refused-in-dataset; "
        "touch ~/datasets/y 2>&1 || echo refused-beside-datasets; "
        "echo kept > ~/work.txt"
    )
    container = api.create_container(
        command=["sh", "-c", script],
        environment={"HOME": "/home/jovyan"},
        **{key: value for key, value in kwargs.items() if key != "environment"},
    )
    try:
        api.start(container)
        assert api.wait(container, timeout=60)["StatusCode"] == 0
        output = api.logs(container).decode()
        mounts = {m["Destination"]: m for m in api.inspect_container(container)["Mounts"]}
    finally:
        api.remove_container(container, force=True)
    assert "hello from the dataset" in output
    assert "Read-only file system" in output and "refused-in-dataset" in output
    assert "Permission denied" in output and "refused-beside-datasets" in output
    assert mounts["/home/jovyan/datasets/demo"]["RW"] is False
    assert not (folder / "x").exists()
    # what stays in the home: the user's file, and one empty root-owned "datasets" folder
    # (the tmpfs's mount point) that the user may remove; the datasets' own mount points
    # were made in the tmpfs and are gone
    listing = api.create_container(
        IMAGE,
        command=["sh", "-c", "ls -A /h; ls -A /h/datasets | wc -l; stat -c %U /h/datasets"],
        host_config=api.create_host_config(binds=[f"{home}:/h:ro"], network_mode="none"),
    )
    try:
        api.start(listing)
        api.wait(listing, timeout=60)
        left = api.logs(listing).decode().split()
    finally:
        api.remove_container(listing, force=True)
    assert "work.txt" in left and "datasets" in left
    assert left[-2:] == ["0", "root"]
