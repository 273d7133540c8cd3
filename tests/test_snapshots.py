"""Snapshots and restores against the real Docker engine (no hub).

Every volume and container here is named with a unique prefix and removed
afterwards. Contents are compared as a manifest: the type, mode, owner and
link target of every entry and the sha256 of every file, read by a
container that mounts the volume.
"""

import asyncio
import secrets
import threading
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import docker.errors
import pytest

from jupyter_gpu_meter import homes, labels, snapshots
from tests.hub import IMAGE

HUB = "hub-snaptest"
OWNER = "1000:100"

#: files of every kind: binary, nested, hidden, a symlink, a hard link, odd modes and names
POPULATE = r"""
cd /home-volume
mkdir -p work/deep/er .config notes
printf 'hello\n' > work.txt
head -c 70000 /dev/urandom > work/model.bin
printf '#!/bin/sh\necho hi\n' > work/run.sh && chmod 0755 work/run.sh
printf 'secret' > .config/token && chmod 0600 .config/token
printf 'x' > 'work/deep/er/a name with spaces'
printf 'y' > work/deep/er/-dash
printf 'z' > ..dotdot
ln -s work/model.bin latest
ln -s /nowhere dangling
ln work.txt hardlink.txt
chmod 2775 notes
chown -R 1000:100 .
chown -h 0:0 dangling
chmod 0711 /home-volume
"""

MANIFEST = r"""
cd /home-volume
find . -printf '%y %m %U:%G %p -> %l\n' | LC_ALL=C sort
find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
"""


def run(api, volume, script, *, read_only=False):
    """Run `script` as root in a container mounting `volume` at /home-volume; its output."""
    return homes.run_helper(
        api,
        image=IMAGE,
        purpose="test",
        volume=volume,
        script=script,
        mounts={volume: "/home-volume:ro" if read_only else "/home-volume"},
        cap_add=snapshots.COPY_CAPS,
    )


def manifest(api, volume):
    return run(api, volume, MANIFEST, read_only=True)


@pytest.fixture
def api(docker_client):
    return docker_client.api


@pytest.fixture
def names(api):
    """A unique prefix; removes every volume and container named with it afterwards."""
    prefix = f"jgm-snaptest-{secrets.token_hex(4)}"
    yield prefix
    for container in api.containers(all=True):
        if any(prefix in name for name in container.get("Names") or []):
            api.remove_container(container["Id"], force=True)
    for volume in api.volumes().get("Volumes") or []:
        if prefix in volume["Name"]:
            api.remove_volume(volume["Name"], force=True)


def make_home(api, name):
    homes.ensure_home(
        api, name, user="ada", hub_id=HUB, owner=OWNER, image=IMAGE, mount_path="/home/jovyan"
    )


@pytest.fixture
def home(api, names):
    name = f"{names}-home-ada"
    make_home(api, name)
    run(api, name, POPULATE)
    return name


def take(api, home, label=""):
    return snapshots.take_snapshot(
        api, home, user="ada", hub_id=HUB, helper_image=IMAGE, label=label
    )


def restore(api, snapshot, home, **kwargs):
    snapshots.restore_snapshot(
        api, snapshot, home, user="ada", hub_id=HUB, helper_image=IMAGE, **kwargs
    )


CHANGE = """
cd /home-volume
printf 'changed\n' > work.txt
rm -rf work/deep .config/token
printf 'new' > new-file
chmod 0644 work/run.sh
"""


# --- pure: names and labels --------------------------------------------------------------


def test_ids_sort_by_time_and_names_fit_docker():
    now = datetime(2026, 11, 30, 6, 1, 2, tzinfo=timezone.utc)
    assert snapshots.new_snapshot_id(now, "a1b2c3") == "20261130-060102-a1b2c3"
    assert snapshots.ID_PATTERN.match(snapshots.new_snapshot_id(now))
    name = snapshots.snapshot_volume_name("jupyter-gpu-meter-home-ada", "20261130-060102-a1b2c3")
    assert name == "jupyter-gpu-meter-home-ada.snapshot-20261130-060102-a1b2c3"
    long_home = homes.home_volume_name(homes.DEFAULT_TEMPLATE, "x" * 300)
    for made in (
        snapshots.snapshot_volume_name(long_home, "20261130-060102-a1b2c3"),
        snapshots.marker_volume_name(long_home),
    ):
        assert len(made) <= homes.MAX_VOLUME_NAME
        assert homes._VOLUME_NAME.match(made)
    other = homes.home_volume_name(homes.DEFAULT_TEMPLATE, "x" * 299 + "y")
    assert snapshots.marker_volume_name(other) != snapshots.marker_volume_name(long_home)


@pytest.mark.parametrize(
    "label, expected",
    [
        (None, ""),
        ("", ""),
        ("  before the big run  ", "before the big run"),
        ("Ré-entraîné #2", None),
    ],
)
def test_labels_are_short_text(label, expected):
    assert snapshots.check_label(label) == (label.strip() if expected is None else expected)


@pytest.mark.parametrize(
    "label, message",
    [
        ("x" * 65, "at most 64 characters, got 65"),
        ("a\nb", "not '\\n'"),
        ("<script>", "not '<', '>'"),
        (42, "a snapshot label is text, got int"),
    ],
)
def test_bad_labels_say_what_is_allowed(label, message):
    with pytest.raises(ValueError, match="snapshot label") as caught:
        snapshots.check_label(label)
    assert message in str(caught.value)


def test_user_options_may_name_a_snapshot_beside_any_choice():
    from jupyter_gpu_meter.choice import ChoiceError, Profile, resolve_choice

    profiles = (Profile("cpu", "CPU", default=True), Profile("one", "1 GPU", gpus=1))
    models = {"H100": 2}

    def resolve(options):
        return resolve_choice(options, profiles=profiles, models=models)

    assert resolve({"snapshot": "20261130-060102-a1b2c3"}).snapshot == "20261130-060102-a1b2c3"
    assert resolve({"snapshot": "20261130-060102-a1b2c3"}).profile == "cpu"
    chosen = resolve({"profile": "one", "snapshot": " 20261130-060102-a1b2c3 "})
    assert (chosen.profile, chosen.gpus, chosen.snapshot) == ("one", 1, "20261130-060102-a1b2c3")
    assert resolve({"gpus": 2, "snapshot": ""}).snapshot == ""
    for bad in (3, ["x"], "x" * 65):
        with pytest.raises(ChoiceError, match="'snapshot' is the id of one of your snapshots"):
            resolve({"snapshot": bad})


def test_the_spawn_form_passes_the_snapshot_on():
    from jupyter_gpu_meter.spawner import GPUDockerSpawner

    form = GPUDockerSpawner._options_from_form
    assert form({"profile": ["one"], "snapshot": ["20261130-060102-a1b2c3"]}) == {
        "profile": "one",
        "snapshot": "20261130-060102-a1b2c3",
    }
    assert form({"gpus": ["1"], "snapshot": [""]}) == {"gpus": "1"}


# --- against Docker ------------------------------------------------------------------------


@pytest.mark.slow
def test_restore_gives_back_every_byte_mode_owner_and_link(api, home):
    before = manifest(api, home)
    assert "hardlink.txt" in before and "-> work/model.bin" in before
    snapshot = take(api, home, label="before the run")
    assert snapshot.label == "before the run" and snapshot.user == "ada"
    assert snapshot.size_bytes and snapshot.size_bytes > 70000
    assert [s.id for s in snapshots.list_snapshots(api, hub_id=HUB, user="ada")] == [snapshot.id]
    volume = api.inspect_volume(snapshot.volume)["Labels"]
    assert volume[homes.VOLUME_KIND] == homes.SNAPSHOT
    assert volume[homes.SNAPSHOT_OF] == home and volume[labels.HUB] == HUB

    run(api, home, CHANGE)
    assert manifest(api, home) != before
    restore(api, snapshot, home)
    assert manifest(api, home) == before
    # the hard link is still one file with two names
    assert run(api, home, "stat -c %h /home-volume/work.txt").strip() == "2"
    assert api.inspect_volume(snapshot.volume)  # the snapshot stays
    with pytest.raises(docker.errors.NotFound):
        api.inspect_volume(snapshots.marker_volume_name(home))


@pytest.mark.slow
def test_restore_is_refused_while_a_container_mounts_the_home(api, home, names):
    snapshot = take(api, home)
    run(api, home, CHANGE)
    changed = manifest(api, home)
    container = api.create_container(
        IMAGE,
        command=["sleep", "300"],
        name=f"{names}-server",
        labels={labels.USER: "ada", labels.SERVER: ""},
        host_config=api.create_host_config(binds=[f"{home}:/home/jovyan:rw"]),
    )
    api.start(container)
    with pytest.raises(snapshots.HomeInUse, match=r"ada's server 'default' \(container"):
        restore(api, snapshot, home)
    api.remove_container(container, force=True)
    assert manifest(api, home) == changed
    with pytest.raises(docker.errors.NotFound):
        api.inspect_volume(snapshots.marker_volume_name(home))


@pytest.mark.slow
def test_an_interrupted_copy_leaves_the_home_as_it_was(api, home):
    run(api, home, "head -c 400000000 /dev/urandom > /home-volume/big.bin")
    snapshot = take(api, home)
    run(api, home, CHANGE)
    changed = manifest(api, home)
    helper = homes.helper_name(snapshots.RESTORE, home)
    killed = threading.Event()

    # the helper's start event, not a poll of it: a poll that lost the CPU for a moment
    # under load found the copy already done (the restore then succeeded)
    since = time.time()

    def kill_the_helper_mid_copy():
        starts = api.events(
            since=since,
            until=since + 60,
            filters={"container": helper, "event": "start"},
            decode=True,
        )
        for _ in starts:
            # frozen at once, long before 400 MB are copied, then killed
            api.pause(helper)
            api.kill(helper)
            killed.set()
            starts.close()
            return

    killer = threading.Thread(target=kill_the_helper_mid_copy)
    killer.start()
    with pytest.raises(homes.HelperFailed, match="exit 137"):
        restore(api, snapshot, home)
    killer.join()
    assert killed.is_set()
    assert manifest(api, home) == changed
    assert run(api, home, "ls -A /home-volume | grep jgm || true").strip() == ""
    with pytest.raises(docker.errors.NotFound):
        api.inspect_volume(snapshots.marker_volume_name(home))


def _stage(api, snapshot, home, token="t0"):
    """What a restore does up to its commit, left there as by a crash."""
    api.create_volume(
        name=snapshots.marker_volume_name(home),
        labels={labels.USER: "ada", labels.HUB: HUB, snapshots.RESTORING: home},
    )
    homes.run_helper(
        api,
        image=IMAGE,
        purpose=snapshots.RESTORE,
        volume=home,
        script=snapshots.STAGE_SCRIPT,
        mounts={snapshot.volume: "/snapshot:ro", home: "/home-volume"},
        cap_add=snapshots.COPY_CAPS,
        env={"TOKEN": token},
    )


@pytest.mark.slow
def test_a_crash_before_the_commit_is_rolled_back(api, home):
    snapshot = take(api, home)
    run(api, home, CHANGE)
    changed = manifest(api, home)
    _stage(api, snapshot, home)
    assert ".jgm-restore.ready.t0" in run(api, home, "ls -A /home-volume")
    assert snapshots.finish_interrupted_restore(api, home, helper_image=IMAGE) == "rolled back"
    assert manifest(api, home) == changed
    # nothing left to do: one inspect, no helper
    assert snapshots.finish_interrupted_restore(api, home, helper_image=IMAGE) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash",
    [
        # committed, nothing swapped yet
        "mv .jgm-restore.ready.t0 .jgm-restore.committed",
        # committed, half the old entries in the trash
        "mv .jgm-restore.ready.t0 .jgm-restore.committed; mkdir .jgm-trash; "
        "mv work .config .jgm-trash/",
        # the old entries all in the trash, half the new ones in place
        "mv .jgm-restore.ready.t0 .jgm-restore.committed; mkdir .jgm-trash; "
        'for e in * .config ..dotdot; do mv -- "$e" .jgm-trash/; done; '
        "mv .jgm-restore.committed .jgm-restore.swapping; mv .jgm-restore.swapping/work .",
    ],
    ids=["committed", "half-trashed", "half-swapped"],
)
def test_a_crash_after_the_commit_is_rolled_forward(api, home, crash):
    before = manifest(api, home)
    snapshot = take(api, home)
    run(api, home, CHANGE)
    _stage(api, snapshot, home)
    run(api, home, f"cd /home-volume; {crash}")
    assert snapshots.finish_interrupted_restore(api, home, helper_image=IMAGE) == "rolled forward"
    assert manifest(api, home) == before


@pytest.mark.slow
def test_a_start_waits_while_a_restore_is_at_work(api, home, names):
    _stage(api, take(api, home), home)
    helper = api.create_container(
        IMAGE,
        command=["sleep", "300"],
        name=f"{names}-restorer",
        labels={homes.HELPER: snapshots.RESTORE, snapshots.HELPER_TARGET: home},
    )
    api.start(helper)
    with pytest.raises(homes.HomeBusy, match="a restore of the home .* is in progress"):
        snapshots.finish_interrupted_restore(api, home, helper_image=IMAGE)
    api.remove_container(helper, force=True)
    assert snapshots.finish_interrupted_restore(api, home, helper_image=IMAGE) == "rolled back"


@pytest.mark.slow
def test_an_incomplete_snapshot_is_never_restored(api, home):
    snapshot = take(api, home)
    run(api, snapshot.volume, "rm /home-volume/complete")
    run(api, home, CHANGE)
    changed = manifest(api, home)
    with pytest.raises(homes.HelperFailed, match="the snapshot is incomplete"):
        restore(api, snapshot, home)
    assert manifest(api, home) == changed


@pytest.mark.slow
def test_snapshots_leave_the_restores_folders_out_and_are_deleted(api, home):
    run(api, home, "mkdir /home-volume/.jgm-trash /home-volume/.jgm-restore.partial.x")
    snapshot = take(api, home)
    assert ".jgm" not in run(api, snapshot.volume, "ls -A /home-volume/home")
    assert run(api, snapshot.volume, "cat /home-volume/complete").strip().isdigit()
    snapshots.delete_snapshot(api, snapshot)
    assert snapshots.list_snapshots(api, hub_id=HUB, user="ada") == []
    with pytest.raises(snapshots.SnapshotNotFound, match="ada has no snapshots"):
        snapshots.find_snapshot(api, snapshot.id, hub_id=HUB, user="ada")


@pytest.mark.slow
def test_a_home_of_another_user_or_none_is_refused(api, home, names):
    with pytest.raises(homes.HomeError, match="not this user's home"):
        snapshots.take_snapshot(api, home, user="bob", hub_id=HUB, helper_image=IMAGE)
    with pytest.raises(snapshots.NoHome, match="has no home volume"):
        snapshots.take_snapshot(
            api, f"{names}-home-nobody", user="nobody", hub_id=HUB, helper_image=IMAGE
        )
    with pytest.raises(ValueError, match="snapshot label"):
        take(api, home, label="<b>")


@pytest.mark.slow
def test_admins_remove_a_home_but_not_while_it_is_in_use(api, home, names):
    snapshot = take(api, home)
    (listed,) = [h for h in snapshots.list_homes(api, hub_id=HUB) if h.volume == home]
    assert (listed.user, listed.snapshots, listed.in_use) == ("ada", 1, False)
    container = api.create_container(
        IMAGE,
        command=["sleep", "300"],
        name=f"{names}-server",
        host_config=api.create_host_config(binds=[f"{home}:/home/jovyan:rw"]),
    )
    api.start(container)
    assert [h.in_use for h in snapshots.list_homes(api, hub_id=HUB) if h.volume == home] == [True]
    with pytest.raises(snapshots.HomeInUse, match="stop the server first"):
        snapshots.remove_home(api, "ada", hub_id=HUB)
    api.remove_container(container, force=True)
    removed = snapshots.remove_home(api, "ada", hub_id=HUB)
    assert removed == {"user": "ada", "volumes": [home], "snapshots": []}
    assert [s.id for s in snapshots.list_snapshots(api, hub_id=HUB, user="ada")] == [snapshot.id]
    with pytest.raises(snapshots.NoHome):
        snapshots.remove_home(api, "ada", hub_id=HUB)
    with pytest.raises(snapshots.NoHome, match="start a server from the snapshot instead"):
        restore(api, snapshot, home)
    # the snapshot brings it back into a new home
    make_home(api, home)
    restore(api, snapshot, home)
    assert "work.txt" in run(api, home, "ls /home-volume")
    removed = snapshots.remove_home(api, "ada", hub_id=HUB, with_snapshots=True)
    assert removed["snapshots"] == [snapshot.id]
    assert snapshots.list_snapshots(api, hub_id=HUB, user="ada") == []


# --- error paths ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_failed_copy_leaves_no_snapshot_and_ids_never_reuse_a_volume(api, home):
    with pytest.raises(homes.HomeError, match="helper image 'jgm-no-such-image' not found"):
        snapshots.take_snapshot(api, home, user="ada", hub_id=HUB, helper_image="jgm-no-such-image")
    assert snapshots.list_snapshots(api, hub_id=HUB, user="ada") == []

    def same_id(now):
        return "20261130-060102-000000"

    first = snapshots.take_snapshot(
        api, home, user="ada", hub_id=HUB, helper_image=IMAGE, make_id=same_id
    )
    with pytest.raises(snapshots.SnapshotError, match=f"a volume named {first.volume} exists"):
        snapshots.take_snapshot(
            api, home, user="ada", hub_id=HUB, helper_image=IMAGE, make_id=same_id
        )


@pytest.mark.slow
def test_a_snapshot_in_use_is_not_deleted_and_deleting_twice_is_fine(api, home, names):
    snapshot = take(api, home)
    reader = api.create_container(
        IMAGE,
        command=["sleep", "300"],
        name=f"{names}-reader",
        host_config=api.create_host_config(binds=[f"{snapshot.volume}:/s:ro"]),
    )
    api.start(reader)
    with pytest.raises(snapshots.HomeInUse, match=f"snapshot {snapshot.id} is in use"):
        snapshots.delete_snapshot(api, snapshot)
    api.remove_container(reader, force=True)
    snapshots.delete_snapshot(api, snapshot)
    snapshots.delete_snapshot(api, snapshot)  # gone already: nothing to do


@pytest.mark.slow
def test_restore_takes_only_the_users_own_snapshot_and_notices_a_lost_copy(api, home):
    snapshot = take(api, home)
    stranger = snapshots.Snapshot(**{**snapshot.__dict__, "user": "bob"})
    with pytest.raises(snapshots.SnapshotNotFound, match="is not ada's"):
        restore(api, stranger, home)
    # the copy is staged, then removed by another operation before the commit
    _stage(api, snapshot, home, token="t1")
    run(api, home, "rm -rf /home-volume/.jgm-restore.ready.t1")
    with pytest.raises(homes.HelperFailed, match="the restore's copy in the home is gone"):
        homes.run_helper(
            api,
            image=IMAGE,
            purpose=snapshots.RESTORE,
            volume=home,
            script=snapshots.COMMIT_SCRIPT,
            mounts={home: "/home-volume"},
            env={"TOKEN": "t1"},
        )


@pytest.mark.slow
def test_left_over_helpers_and_markers_are_cleared(api, home, names):
    # a helper whose caller died: exited, but its name would block the next operation
    left = api.create_container(
        IMAGE,
        command=["true"],
        name=homes.helper_name(snapshots.TAKE, home),
        labels={homes.HELPER: snapshots.TAKE, snapshots.HELPER_TARGET: home},
    )
    api.start(left)
    api.wait(left)
    assert take(api, home).user == "ada"
    # a marker of a home that is gone
    gone = f"{names}-home-gone"
    api.create_volume(name=snapshots.marker_volume_name(gone))
    assert (
        snapshots.finish_interrupted_restore(api, gone, helper_image=IMAGE)
        == "marker removed (no home)"
    )
    with pytest.raises(docker.errors.NotFound):
        api.inspect_volume(snapshots.marker_volume_name(gone))


@pytest.mark.slow
def test_a_home_a_stopped_container_refers_to_is_not_removed(api, home, names):
    stopped = api.create_container(
        IMAGE,
        command=["true"],
        name=f"{names}-stopped",
        host_config=api.create_host_config(binds=[f"{home}:/home/jovyan:rw"]),
    )
    api.start(stopped)
    api.wait(stopped)
    with pytest.raises(snapshots.HomeInUse, match="a container \\(maybe a stopped one\\)"):
        snapshots.remove_home(api, "ada", hub_id=HUB)
    api.remove_container(stopped)
    assert snapshots.remove_home(api, "ada", hub_id=HUB)["volumes"] == [home]


# --- the spawner's part: finish, or restore before a start -----------------------------------


def spawner_of(home, **homes_settings):
    from jupyterhub import orm
    from traitlets.config import Config

    from jupyter_gpu_meter import GPUDockerSpawner

    spawner = GPUDockerSpawner(
        user=SimpleNamespace(name="ada", id=1, url="/user/ada/", groups=[]),
        orm_spawner=orm.Spawner(name="", user_options={"gpus": 0, "snapshot": "x"}),
        config=Config(
            {
                "HubIdentity": {"hub_id": HUB},
                "HomeVolumes": {"helper_image": IMAGE, **homes_settings},
            }
        ),
    )
    spawner.home_volume = home
    spawner.user_options = {"gpus": 0, "snapshot": "x"}
    return spawner


def spawn_refusal(spawner, snapshot_id):
    from tornado import web

    with pytest.raises(web.HTTPError) as caught:
        asyncio.run(spawner._restore_home(snapshot_id))
    return caught.value.status_code, caught.value.log_message % caught.value.args


@pytest.mark.slow
def test_the_spawner_restores_once_and_refuses_what_it_cannot(api, home, names):
    snapshot = take(api, home)
    before = manifest(api, home)
    assert spawn_refusal(spawner_of(""), snapshot.id) == (
        400,
        "starting from a snapshot needs persistent homes: off here",
    )
    status, message = spawn_refusal(spawner_of(home), "20990101-000000-ffffff")
    assert status == 400
    assert (
        message == f"ada has no snapshot '20990101-000000-ffffff'; ada's snapshots: {snapshot.id}"
    )

    server = api.create_container(
        IMAGE,
        command=["sleep", "300"],
        name=f"{names}-named-server",
        labels={labels.USER: "ada", labels.SERVER: "train"},
        host_config=api.create_host_config(binds=[f"{home}:/home/jovyan:rw"]),
    )
    api.start(server)
    status, message = spawn_refusal(spawner_of(home), snapshot.id)
    assert status == 409
    assert message.startswith(f"cannot start from snapshot {snapshot.id}: the home {home} is in")
    assert "ada's server 'train'" in message
    api.remove_container(server, force=True)

    status, message = spawn_refusal(spawner_of(home, helper_image="jgm-no-such-image"), snapshot.id)
    assert status == 500 and message.startswith("your home cannot be restored: helper image")

    run(api, home, CHANGE)
    spawner = spawner_of(home)
    asyncio.run(spawner._restore_home(snapshot.id))
    assert manifest(api, home) == before
    assert spawner.user_options == {"gpus": 0}
    assert spawner.orm_spawner.user_options == {"gpus": 0}
    asyncio.run(spawner._restore_home(""))  # nothing to finish: no helper at all
