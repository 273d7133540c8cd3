"""SSH on or off per server, and the user's keys written into the container at create.

The settings and the profile key are checked without Docker; reading the keys
runs against real SQLite and PostgreSQL ledgers (and a file that is no ledger);
the rest drives a real hub and Docker and looks inside the containers.
"""

import asyncio
import base64
import io
import logging
import struct
import tarfile
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from jupyterhub import orm
from traitlets import TraitError
from traitlets.config import Config

from jupyter_gpu_meter import GPUDockerSpawner, labels
from jupyter_gpu_meter.choice import ChoiceError, parse_profiles, resolve_choice
from jupyter_gpu_meter.container import SSH_ENV, Hardening, container_labels, enforce_create_kwargs
from jupyter_gpu_meter.ledger import Ledger
from jupyter_gpu_meter.spawner_ssh import read_ssh_keys
from jupyter_gpu_meter.ssh import parse_public_key

KEYS_FILE = "/etc/jupyter-gpu-meter/ssh/authorized_keys"


def key_line(seed: int, comment: str) -> str:
    """A well-formed ed25519 public key line (32 bytes of `seed`): what ssh-keygen writes."""
    blob = b"".join(
        struct.pack(">I", len(part)) + part for part in (b"ssh-ed25519", bytes([seed]) * 32)
    )
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def spawner(user="ada", **settings):
    return GPUDockerSpawner(
        user=SimpleNamespace(name=user, id=1, url=f"/user/{user}/", groups=[]),
        orm_spawner=orm.Spawner(name=""),  # the hub's own record, not in a database
        config=Config({"GPUDockerSpawner": settings}),
    )


def ledger_with_key(url: str, user: str, line: str) -> None:
    with Ledger(url) as ledger:
        ledger.ensure_schema()
        ledger.add_ssh_key(user, parse_public_key(line), datetime.now(timezone.utc))


# --- settings and profiles ---------------------------------------------------


@pytest.mark.parametrize("value", ["no", "false", 0, 1, None, [True]])
def test_a_profile_s_ssh_must_be_true_or_false(value):
    with pytest.raises(ValueError) as refused:
        parse_profiles([{"display_name": "GPU", "ssh": value}])
    assert str(refused.value) == (
        "profile #0 ('GPU'): 'ssh' must be True or False (SSH into this profile's servers; "
        f"absent: c.GPUDockerSpawner.ssh_enabled decides), got {value!r}"
    )
    with pytest.raises(ValueError, match="'ssh' must be True or False"):  # at config time too
        spawner(profile_list=[{"display_name": "GPU", "ssh": value}])


def test_the_chosen_profile_s_ssh_reaches_the_choice_and_users_cannot_set_it():
    profiles = parse_profiles(
        [
            {"display_name": "Plain", "slug": "plain"},
            {"display_name": "Off", "slug": "off", "ssh": False},
            {"display_name": "On", "slug": "on", "ssh": True},
        ]
    )
    assert [profile.ssh for profile in profiles] == [None, False, True]

    def chosen(options):
        return resolve_choice(options, profiles=profiles, models={}).ssh

    assert [chosen({"profile": slug}) for slug in ("plain", "off", "on")] == [None, False, True]
    assert chosen({}) is None  # the first profile is the default
    assert resolve_choice({"gpus": 0}, profiles=(), models={}).ssh is None
    with pytest.raises(ChoiceError, match=r"unknown option\(s\) 'ssh'; allowed: gpus"):
        chosen({"profile": "off", "ssh": True})


def test_check_config_stops_a_hub_whose_profile_has_a_bad_ssh():
    from jupyter_gpu_meter.hubconfig import check_config

    c = Config()
    c.GPUDockerSpawner.profile_list = [{"display_name": "Workshop", "ssh": "no"}]
    with pytest.raises(ValueError, match=r"'Workshop'\): 'ssh' must be True or False"):
        check_config(c)
    c.GPUDockerSpawner.profile_list = [{"display_name": "Workshop", "ssh": False}]
    check_config(c)


def test_ssh_enabled_is_a_bool_and_a_profile_overrides_it_either_way():
    with pytest.raises(TraitError, match="'ssh_enabled' trait .* expected a bool"):
        spawner(ssh_enabled="no")
    on, off = spawner(), spawner(ssh_enabled=False)
    assert (on.ssh_enabled, on.ssh, off.ssh) == (True, True, False)
    assert [on.choose_ssh(value) for value in (None, False, True)] == [True, False, True]
    assert [off.choose_ssh(value) for value in (None, False, True)] == [False, False, True]


@pytest.mark.parametrize("ssh, value", [(True, "1"), (False, "0")])
def test_the_variable_always_says_what_the_label_says(ssh, value):
    # an admin's extra_create_kwargs replacing the environment cannot turn sshd on or off
    found = container_labels(
        user="ada", server="", gpu_uuids=[], gpu_model=None, profile="", hub_id="h", ssh=ssh
    )
    assert found[labels.SSH] == value
    for environment in ({}, {SSH_ENV: "0" if ssh else "1"}, [f"{SSH_ENV}=x", "A=b"]):
        kwargs = enforce_create_kwargs(
            {"image": "x", "environment": environment},
            gpu_uuids=[],
            container_labels=found,
            hardening=Hardening(),
        )
        assert kwargs["environment"][SSH_ENV] == value
        assert kwargs["labels"][labels.SSH] == value


# --- reading the keys ------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.sqlite"
    return request.getfixturevalue("postgres_url")


def test_the_keys_come_from_the_ledger_in_the_order_added(ledger_url):
    first, second = key_line(1, "ada@laptop"), key_line(2, "ada@ci")
    ledger_with_key(ledger_url, "ada", first)
    ledger_with_key(ledger_url, "ada", second)
    ledger_with_key(ledger_url, "bob", key_line(3, "bob@laptop"))
    assert [key.comment for key in read_ssh_keys(ledger_url, "ada")] == ["ada@laptop", "ada@ci"]
    assert read_ssh_keys(ledger_url, "carol") == []


def test_no_ledger_yet_means_no_keys(tmp_path):
    # no meter has made the SQLite file: nothing to read, nothing wrong
    assert read_ssh_keys(f"sqlite:///{tmp_path}/none.sqlite", "ada") == []
    assert not (tmp_path / "none.sqlite").exists()


def archive_text(archive: bytes) -> str:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return tar.extractfile(KEYS_FILE.lstrip("/")).read().decode()


def test_a_ledger_that_cannot_be_read_gives_an_empty_file_and_a_warning(tmp_path, caplog):
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"this is not a database" * 100)
    server = spawner(ledger_url=f"sqlite:///{broken}")
    with caplog.at_level(logging.WARNING):
        archive = asyncio.run(server._ssh_keys_archive())
    assert archive_text(archive) == ""
    (warning,) = [r.getMessage() for r in caplog.records if "SSH keys" in r.getMessage()]
    assert warning.startswith("Reading the SSH keys of ada from the ledger failed (DatabaseError")
    assert "file is not a database" in warning
    assert warning.endswith(
        "starts with none, and the meter writes them when it sees the server start"
    )


def test_the_archive_holds_the_user_s_keys(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.sqlite"
    ledger_with_key(url, "ada", key_line(1, "ada@laptop"))
    archive = asyncio.run(spawner(ledger_url=url)._ssh_keys_archive())
    assert archive_text(archive) == key_line(1, "ada@laptop") + "\n"


# --- a real hub and Docker ---------------------------------------------------


def inside(container, *command: str) -> tuple[int, str]:
    """Run `command` in the container as its user (uid 1000): exit code and output."""
    result = container.exec_run(list(command))
    return result.exit_code, result.output.decode()


def assert_ssh(container, value: str) -> None:
    assert container.labels[labels.SSH] == value
    assert f"{SSH_ENV}={value}" in container.attrs["Config"]["Env"]
    assert inside(container, "printenv", SSH_ENV) == (0, value + "\n")


def assert_no_keys_file(container) -> None:
    # the image makes the empty folder /etc/jupyter-gpu-meter/ssh; only the file tells
    assert inside(container, "test", "-e", "/etc/jupyter-gpu-meter/ssh/authorized_keys")[0] == 1


def keys_file(container) -> str:
    """The keys file's text, after checking it and its folders are root's and read-only to
    the container's user."""
    folders = ["/etc/jupyter-gpu-meter", "/etc/jupyter-gpu-meter/ssh"]
    code, output = inside(container, "stat", "-c", "%n %u:%g %a", *folders, KEYS_FILE)
    assert code == 0, output
    assert output.splitlines() == [
        f"{folders[0]} 0:0 755",
        f"{folders[1]} 0:0 755",
        f"{KEYS_FILE} 0:0 644",
    ]
    assert inside(container, "sh", "-c", f"echo x >> {KEYS_FILE}")[0] != 0
    code, text = inside(container, "cat", KEYS_FILE)
    assert code == 0, text
    return text


PROFILES = [
    {"display_name": "Plain", "slug": "plain", "default": True},
    {"display_name": "No SSH", "slug": "no-ssh", "ssh": False},
    {"display_name": "SSH", "slug": "ssh", "ssh": True},
]


@pytest.mark.docker
@pytest.mark.hub
@pytest.mark.slow
def test_servers_get_ssh_and_keys_as_the_admin_says(make_hub, tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.sqlite"
    ledger_with_key(url, "ada", key_line(1, "ada@laptop"))
    hub = make_hub(
        "1",
        **{"GPUDockerSpawner.ledger_url": url, "GPUDockerSpawner.profile_list": PROFILES},
    )
    # on (the default): the label, the variable and the user's key, before the server ran
    assert hub.start_server("ada", {}).status_code in (201, 202)
    ada = hub.container_of("ada")
    assert_ssh(ada, "1")
    assert keys_file(ada) == key_line(1, "ada@laptop") + "\n"
    # off for one profile: no keys file either
    assert hub.start_server("ada", {"profile": "no-ssh"}, server="quiet").status_code in (201, 202)
    quiet = hub.container_of("ada", "quiet")
    assert_ssh(quiet, "0")
    assert_no_keys_file(quiet)

    # off for everyone, on again for one profile; a ledger that cannot be read
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"this is not a database" * 100)
    hub.restart(
        **{
            "GPUDockerSpawner.ssh_enabled": False,
            "GPUDockerSpawner.ledger_url": f"sqlite:///{broken}",
        }
    )
    assert hub.start_server("bob", {}).status_code in (201, 202)
    bob = hub.container_of("bob")
    assert_ssh(bob, "0")
    assert_no_keys_file(bob)
    assert "Reading the SSH keys" not in hub.logs()  # with SSH off nothing is read

    # the start goes on, with an empty file and the cause in the hub's log
    assert hub.start_server("ada", {"profile": "ssh"}, server="on").status_code in (201, 202)
    assert hub.wait_for("ada", "on")
    on = hub.container_of("ada", "on")
    assert_ssh(on, "1")
    assert keys_file(on) == ""
    assert (
        "Reading the SSH keys of ada from the ledger failed (DatabaseError: (sqlite3.DatabaseError)"
        " file is not a database)" in hub.logs()
    )
