"""Home volumes: names safe for any user name, settings that say what is allowed, and the
Docker plumbing that makes a home (against the real engine)."""

import secrets
import string
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from traitlets.config import Config

from jupyter_gpu_meter import homes
from jupyter_gpu_meter.homes import (
    DEFAULT_TEMPLATE,
    MAX_VOLUME_NAME,
    HomeVolumes,
    escape_name,
    home_volume_name,
)

#: when a test says it made a volume (its creation label)
T_MADE = datetime(2026, 11, 30, 6, 1, 2, 3, tzinfo=timezone.utc)
DOCKER_NAME = set(string.ascii_letters + string.digits + "_.-")


def test_names_are_escaped_one_to_one():
    assert escape_name("ada") == "ada"
    assert escape_name("Ada.Lovelace-1") == "Ada.Lovelace-1"
    assert escape_name("ada_l@x") == "ada_5fl_40x"
    assert escape_name("josé") == "jos_c3_a9"
    assert escape_name("a b/c") == "a_20b_2fc"
    # "_" itself is escaped, so no escaped name can pose as another
    assert escape_name("ada_") != escape_name("ada_5f")


@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=80))
def test_distinct_user_names_get_distinct_docker_safe_volume_names(one, other):
    first = home_volume_name(DEFAULT_TEMPLATE, one)
    assert set(first) <= DOCKER_NAME and len(first) <= MAX_VOLUME_NAME
    if one != other:
        assert first != home_volume_name(DEFAULT_TEMPLATE, other)


def test_long_names_are_shortened_with_a_hash_and_stay_distinct():
    long_one, long_two = "a" * 300 + "1", "a" * 300 + "2"
    first, second = (home_volume_name(DEFAULT_TEMPLATE, name) for name in (long_one, long_two))
    assert len(first) == len(second) == MAX_VOLUME_NAME
    assert first.startswith("jupyter-gpu-meter-home-aaaa") and first != second
    assert home_volume_name("{hub_id}-home-{username}", "ada", "hub-1") == "hub-1-home-ada"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("home-{user}", "unknown placeholder(s) {user}; allowed: {username}, {hub_id}"),
        ("home", "must contain {username}: without it every user would share one home"),
        ("-home-{username}", "gives '-home-a', which Docker refuses: a volume name starts with"),
        ("home/{username}", "gives 'home/a', which Docker refuses"),
    ],
)
def test_a_bad_template_is_refused_at_config_load(template, message):
    config = Config()
    config.HomeVolumes.name_template = template
    with pytest.raises(ValueError) as raised:
        HomeVolumes(config=config)
    assert message in str(raised.value)


@pytest.mark.parametrize("path", ["", "/", "home/jovyan", "//"])
def test_the_mount_path_must_be_an_absolute_folder(path):
    with pytest.raises(ValueError) as raised:
        HomeVolumes(mount_path=path)
    assert "give an absolute folder other than '/', e.g. '/home/jovyan'" in str(raised.value)


def test_settings_and_their_defaults():
    assert HomeVolumes().enabled
    assert HomeVolumes(mount_path="/home/user/").mount_path == "/home/user"
    assert HomeVolumes().helper_image == homes.DEFAULT_IMAGE
    config = Config()
    config.GPUDockerSpawner.image = "example/pytorch:2.9"
    assert HomeVolumes(config=config).helper_image == "example/pytorch:2.9"
    config = Config()
    config.DockerSpawner.image = "example/other:1"
    assert HomeVolumes(config=config).helper_image == "example/other:1"
    assert HomeVolumes(size_warning="50G").size_warning == 50 * 1024**3


def test_docker_times_are_read_as_aware_utc():
    assert homes.parse_docker_time("2026-11-30T06:01:02Z") == datetime(
        2026, 11, 30, 6, 1, 2, tzinfo=timezone.utc
    )
    assert homes.parse_docker_time("2026-11-30T07:01:02.123456789+01:00") == datetime(
        2026, 11, 30, 6, 1, 2, 123456, tzinfo=timezone.utc
    )
    assert homes.parse_docker_time("") is None
    assert homes.parse_docker_time("yesterday") is None


# --- against the real Docker engine --------------------------------------------


@pytest.fixture
def api(docker_client):
    return docker_client.api


@pytest.fixture
def volume_name(api):
    name = f"jgm-test-home-{secrets.token_hex(4)}"
    yield name
    for container in api.containers(all=True, filters={"volume": name}):
        api.remove_container(container["Id"], force=True)
    try:
        api.remove_volume(name, force=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


@pytest.mark.docker
def test_a_new_home_is_labelled_and_owned_by_the_notebook_user(api, volume_name):
    from tests.hub import IMAGE

    made = homes.ensure_home(
        api,
        volume_name,
        user="ada",
        hub_id="hub-a",
        owner="1000:100",
        image=IMAGE,
        mount_path="/home/jovyan",
        clock=lambda: T_MADE,
    )
    assert made
    info = api.inspect_volume(volume_name)
    assert info["Labels"] == {
        homes.VOLUME_KIND: "home",
        "jupyter-gpu-meter.user": "ada",
        "jupyter-gpu-meter.hub": "hub-a",
        "jupyter-gpu-meter.volume-created": "2026-11-30T06:01:02.000003Z",
    }
    # Docker's own CreatedAt moved when the helper mounted it: the label did not
    assert homes.Volume.from_docker(api.inspect_volume(volume_name)).created_at == T_MADE
    owner = homes.run_helper(
        api,
        image=IMAGE,
        purpose="look",
        volume=volume_name,
        script="stat -c '%u:%g %a' /v; stat -c '%n %u' /v/.bashrc",
        mounts={volume_name: "/v:ro"},
    )
    assert owner == "1000:100 755\n/v/.bashrc 1000\n"  # the image's home came along
    # the second start finds it
    assert not homes.ensure_home(
        api,
        volume_name,
        user="ada",
        hub_id="hub-a",
        owner="1000:100",
        image=IMAGE,
        mount_path="/home/jovyan",
    )
    (listed,) = homes.labelled_volumes(api, hub_id="hub-a", kind="home", user="ada")
    assert listed.name == volume_name and listed.user == "ada"
    assert listed.created_at is not None and listed.created_at.tzinfo is not None
    assert homes.labelled_volumes(api, hub_id="hub-b") == []


@pytest.mark.docker
def test_a_volume_not_made_as_this_users_home_is_refused(api, volume_name):
    from tests.hub import IMAGE

    api.create_volume(volume_name)
    with pytest.raises(homes.HomeError) as raised:
        homes.ensure_home(
            api,
            volume_name,
            user="ada",
            hub_id="h",
            owner="1000:100",
            image=IMAGE,
            mount_path="/home/jovyan",
        )
    assert str(raised.value) == (
        f"a Docker volume named {volume_name} exists but was not made as a home "
        "(no jupyter-gpu-meter labels): rename or remove it, or change "
        "c.HomeVolumes.name_template"
    )


@pytest.mark.docker
def test_a_missing_helper_image_says_what_to_do_and_leaves_no_half_made_home(api, volume_name):
    with pytest.raises(homes.HomeError) as raised:
        homes.ensure_home(
            api,
            volume_name,
            user="ada",
            hub_id="h",
            owner="1000:100",
            image="jgm-test/no-such-image:0",
            mount_path="/home/jovyan",
        )
    assert str(raised.value) == (
        "helper image 'jgm-test/no-such-image:0' not found: build it, or set "
        "c.HomeVolumes.helper_image to an image with sh, cp, mv and chown"
    )
    assert api.volumes(filters={"name": volume_name})["Volumes"] in (None, [])


@pytest.mark.docker
def test_a_failing_helper_reports_its_output(api, volume_name):
    from tests.hub import IMAGE

    api.create_volume(volume_name)
    with pytest.raises(homes.HelperFailed) as raised:
        homes.run_helper(
            api,
            image=IMAGE,
            purpose="fail",
            volume=volume_name,
            script="echo 'disk full' >&2; exit 3",
            mounts={volume_name: "/v"},
        )
    assert str(raised.value) == f"fail of {volume_name} failed (exit 3): disk full"
    assert api.containers(all=True, filters={"volume": volume_name}) == []


@pytest.mark.docker
def test_two_operations_on_one_volume_cannot_overlap(api, volume_name):
    from tests.hub import IMAGE

    api.create_volume(volume_name)
    # an operation in progress holds the helper's name
    running = api.create_container(
        IMAGE, command=["true"], name=homes.helper_name("prepare", volume_name)
    )
    try:
        with pytest.raises(homes.HomeBusy) as raised:
            homes.run_helper(
                api,
                image=IMAGE,
                purpose="prepare",
                volume=volume_name,
                script="true",
                mounts={volume_name: "/v"},
            )
        assert str(raised.value) == f"{volume_name}: another operation (prepare) on it is running"
    finally:
        api.remove_container(running, force=True)
