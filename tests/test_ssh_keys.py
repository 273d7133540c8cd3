"""SSH keys: the pure checks against keys made by the real ssh-keygen (fingerprints compared
with ``ssh-keygen -lf``), property tests, the ledger on SQLite and PostgreSQL (migration
0008), and the keys written into a real container by the meter's :class:`KeyPusher`."""

import asyncio
import base64
import io
import secrets
import shutil
import subprocess
import tarfile
import threading
import time

import docker.errors
import pytest
import sqlalchemy as sa
from alembic import command
from hypothesis import given
from hypothesis import strategies as st

from jupyter_gpu_meter import labels, ssh
from jupyter_gpu_meter.ledger import DuplicateKey, TooManyKeys
from jupyter_gpu_meter.ledger import schema as ledger_schema
from jupyter_gpu_meter.service.ssh_push import KeyPusher
from tests import test_ledger
from tests.hub import IMAGE
from tests.test_ledger import T0, at

db_url = test_ledger.db_url
clock = test_ledger.clock
make_ledger = test_ledger.make_ledger
ledger = test_ledger.ledger

POINT, COMPRESSED = b"\x04", b"\x02"  # ECDSA points' first byte
F4, EVEN, NEGATIVE, BIG = b"\x01\x00\x01", b"\x04", b"\x80", b"\x40"  # RSA mpints' bytes

KINDS = {
    "ed25519": ["-t", "ed25519"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
    "rsa2048": ["-t", "rsa", "-b", "2048"],
    "rsa3072": ["-t", "rsa", "-b", "3072"],
    "rsa1024": ["-t", "rsa", "-b", "1024"],
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Kind -> (public key line, private key text, `ssh-keygen -lf` fingerprint and bits)."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("no ssh-keygen (apt install openssh-client)")
    folder = tmp_path_factory.mktemp("keys")
    made = {}
    for kind, args in KINDS.items():
        path = folder / kind
        subprocess.run(
            ["ssh-keygen", "-q", *args, "-N", "", "-C", f"ada@laptop {kind}", "-f", str(path)],
            check=True,
        )
        listed = subprocess.run(
            ["ssh-keygen", "-lf", f"{path}.pub"], check=True, capture_output=True, text=True
        ).stdout.split()
        made[kind] = (
            (folder / f"{kind}.pub").read_text(),
            path.read_text(),
            listed[1],
            int(listed[0]),
        )
    return made


# --- the pure checks ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "rsa1024"])
def test_real_keys_are_accepted_with_ssh_keygens_fingerprint(keys, kind):
    line, _, fingerprint, bits = keys[kind]
    key = ssh.parse_public_key(line)
    assert key.fingerprint == fingerprint and key.bits == bits
    assert key.comment == f"ada@laptop {kind}"
    assert key.line == line.strip() and key.public_key == " ".join(line.split()[:2])


def test_rsa_under_2048_bits_is_refused_saying_what_is_allowed(keys):
    with pytest.raises(ValueError, match="1024 bits; at least 2048") as refused:
        ssh.parse_public_key(keys["rsa1024"][0])
    assert "allowed: one public key on one line" in str(refused.value)


def test_a_private_key_is_refused_by_name(keys):
    with pytest.raises(ValueError, match="PRIVATE key: never share it"):
        ssh.parse_public_key(keys["ed25519"][1])
    with pytest.raises(ValueError, match="RFC 4716"):
        ssh.parse_public_key("---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----")


def test_the_types_inside_must_match_and_sizes_be_right(keys):
    ed_blob = keys["ed25519"][0].split()[1]
    ecdsa_blob = keys["ecdsa256"][0].split()[1]
    cases = {
        f"ssh-rsa {ed_blob}": "its data is a 'ssh-ed25519' key",
        f"ecdsa-sha2-nistp384 {ecdsa_blob}": "its data is a 'ecdsa-sha2-nistp256' key",
        f"ssh-ed25519 {wire(b'ssh-ed25519', b'x' * 31)}": "32 bytes",
        f"ssh-ed25519 {wire(b'ssh-ed25519', b'x' * 32)[:-4]}": "cut short",
        f"ssh-ed25519 {wire(b'ssh-ed25519', b'x' * 32, b'more')}": "bytes after its end",
        f"ecdsa-sha2-nistp256 {wire(b'ecdsa-sha2-nistp256', b'nistp384', POINT + 96 * b'x')}": (
            "names b'nistp384'"
        ),
        f"ecdsa-sha2-nistp256 {wire(b'ecdsa-sha2-nistp256', b'nistp256', COMPRESSED + 64 * b'x')}": (  # noqa: E501
            "not an uncompressed"
        ),
        f"ssh-rsa {wire(b'ssh-rsa', F4, NEGATIVE + 256 * b'x')}": "negative",
        f"ssh-rsa {wire(b'ssh-rsa', EVEN, BIG + 256 * b'x')}": "exponent must be odd",
        f"sk-ssh-ed25519@openssh.com {wire(b'sk-ssh-ed25519@openssh.com', 32 * b'k', b'x')}": (
            "application must start with 'ssh:'"
        ),
        "ssh-ed25519 AAAA!!!!": "not base64",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI=": "not base64",
        "ssh-ed25519": "base64 data is missing",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP": "'ssh-dss' is not an accepted key type",
        "": "the key is empty",
    }
    for line, message in cases.items():
        with pytest.raises(ValueError, match=message_pattern(message)):
            ssh.parse_public_key(line)


def test_security_keys_are_accepted():
    blob = wire(b"sk-ssh-ed25519@openssh.com", 32 * b"k", b"ssh:")
    key = ssh.parse_public_key(f"sk-ssh-ed25519@openssh.com {blob} yubikey")
    assert key.bits == 256 and key.key_type == "sk-ssh-ed25519@openssh.com"
    blob = wire(b"sk-ecdsa-sha2-nistp256@openssh.com", b"nistp256", b"\x04" + 64 * b"p", b"ssh:")
    assert ssh.parse_public_key(f"sk-ecdsa-sha2-nistp256@openssh.com {blob}").comment == ""


def test_options_newlines_control_characters_and_second_keys_are_refused(keys):
    line = keys["ed25519"][0].strip()
    other = keys["ecdsa256"][0].strip()
    cases = {
        f'command="rm -rf ~" {line}': "options before the key type",
        f"no-pty,no-port-forwarding {line}": "options before the key type",
        f'restrict,command="sh" {line}': "options before the key type",
        f'from="*" {line}': "options before the key type",
        f"{line}\n{other}": "more than one line",
        f"{line}\r\ncommand=x {other}": "more than one line",
        f"{line} {other}": "holds a second key",
        f"{line} evil\x00": "control characters",
        f"{line} bell\x07": "control characters",
        f"{line} tab\there": "control characters",
        f"{line.rsplit(' ', 2)[0]} {'c' * 201}": "the comment has 201 characters",
        f"{line} {'c' * 17000}": "longer than 16384 bytes",
    }
    for text, message in cases.items():
        with pytest.raises(ValueError, match=message_pattern(message)):
            ssh.parse_public_key(text)
    for not_text in (None, 42, b"ssh-ed25519 AAAA", ["ssh-ed25519"]):
        with pytest.raises(ValueError, match="not text"):
            ssh.parse_public_key(not_text)


def test_surrounding_whitespace_and_tabs_between_fields_are_fine(keys):
    kind, blob, *comment = keys["ed25519"][0].split()
    key = ssh.parse_public_key(f"\n  {kind}\t{blob}  \t ada  laptop \n")
    assert key.line == f"{kind} {blob} ada  laptop" and key.fingerprint == keys["ed25519"][2]


def test_the_archive_holds_root_owned_dirs_and_a_0644_file(keys):
    parsed = ssh.parse_public_key(keys["ed25519"][0])
    data = ssh.authorized_keys_archive([parsed], mtime=1_800_000_000)
    assert ssh.authorized_keys_archive([parsed], mtime=1_800_000_000) == data  # repeatable
    archive = tarfile.open(fileobj=io.BytesIO(data))
    members = {m.name.rstrip("/"): m for m in archive.getmembers()}
    assert list(members) == [
        "etc",
        "etc/jupyter-gpu-meter",
        "etc/jupyter-gpu-meter/ssh",
        "etc/jupyter-gpu-meter/ssh/authorized_keys",
    ]
    for name, member in members.items():
        assert (member.uid, member.gid, member.mtime) == (0, 0, 1_800_000_000)
        assert member.mode == (0o644 if name.endswith("authorized_keys") else 0o755)
    text = archive.extractfile(members["etc/jupyter-gpu-meter/ssh/authorized_keys"]).read()
    assert text.decode() == parsed.line + "\n"
    empty = tarfile.open(fileobj=io.BytesIO(ssh.authorized_keys_archive([])))
    assert empty.extractfile("etc/jupyter-gpu-meter/ssh/authorized_keys").read() == b""


def test_the_file_is_rebuilt_from_checked_parts_and_refuses_bad_rows(keys):
    line = keys["ecdsa384"][0]
    assert ssh.authorized_keys_text([line, line]) == 2 * (line.strip() + "\n")
    with pytest.raises(ValueError, match="options"):
        ssh.authorized_keys_text([f"no-pty {line}"])


@given(st.text(max_size=300))
def test_any_text_is_a_key_or_a_valueerror_never_a_crash(text):
    try:
        key = ssh.parse_public_key(text)
    except ValueError as e:
        assert "allowed" in str(e) or "PRIVATE" in str(e)
    else:
        assert ssh.parse_public_key(key.line) == key


@given(st.binary(max_size=200), st.sampled_from(ssh.KEY_TYPES), st.text(max_size=40))
def test_any_blob_under_any_type_is_checked_not_trusted(blob, key_type, comment):
    text = f"{key_type} {base64.b64encode(blob).decode()} {comment}"
    try:
        key = ssh.parse_public_key(text)
    except ValueError:
        return
    # what passes is one line, starting with the type, that reads back the same
    assert "\n" not in key.line and key.line.startswith(key_type + " ")
    assert ssh.parse_public_key(key.line) == key


@given(st.sampled_from(["ed25519", "ecdsa521", "rsa3072"]), st.text(max_size=60))
def test_any_comment_is_kept_or_refused_never_injected(keys, kind, comment):
    kind_, blob = keys[kind][0].split()[:2]
    try:
        key = ssh.parse_public_key(f"{kind_} {blob} {comment}")
    except ValueError:
        return
    assert key.comment == comment.strip(" \t") and key.comment.isprintable()
    assert ssh.authorized_keys_text([key]).count("\n") == 1


def wire(*parts: bytes) -> str:
    return base64.b64encode(b"".join(len(p).to_bytes(4, "big") + p for p in parts)).decode()


def message_pattern(message: str) -> str:
    import re

    return re.escape(message)


# --- the ledger ------------------------------------------------------------------------


def test_keys_are_added_listed_oldest_first_and_removed(ledger, keys):
    first = ledger.add_ssh_key("ada", ssh.parse_public_key(keys["ed25519"][0]), T0)
    second = ledger.add_ssh_key("ada", ssh.parse_public_key(keys["rsa2048"][0]), at(60))
    ledger.add_ssh_key("bob", ssh.parse_public_key(keys["ed25519"][0]), at(30))  # same key: ok
    assert ledger.ssh_keys("ada") == [first, second]
    assert first.user == "ada" and first.key_type == "ssh-ed25519" and first.added_at == T0
    assert first.fingerprint == keys["ed25519"][2] and first.line == keys["ed25519"][0].strip()
    assert not ledger.remove_ssh_key("bob", first.id)  # not bob's
    assert ledger.remove_ssh_key("ada", first.id) == first
    assert not ledger.remove_ssh_key("ada", first.id)
    assert not ledger.remove_ssh_key("ada", 2**40)  # beyond the column: no such key
    assert ledger.ssh_keys("ada") == [second]
    assert [k.user for k in ledger.ssh_keys("bob")] == ["bob"]


def test_a_duplicate_and_a_key_over_the_limit_are_refused(ledger, keys):
    key = ssh.parse_public_key(keys["ed25519"][0])
    ledger.add_ssh_key("ada", key, T0)
    with pytest.raises(DuplicateKey, match="has this key"):
        ledger.add_ssh_key("ada", key, at(1))
    for i in range(ssh.MAX_KEYS_PER_USER - 1):
        blob = wire(b"ssh-ed25519", i.to_bytes(32, "big"))
        ledger.add_ssh_key("ada", ssh.parse_public_key(f"ssh-ed25519 {blob}"), at(i + 2))
    with pytest.raises(TooManyKeys, match="remove one before adding another"):
        ledger.add_ssh_key("ada", ssh.parse_public_key(keys["ecdsa256"][0]), at(99))
    assert len(ledger.ssh_keys("ada")) == ssh.MAX_KEYS_PER_USER


def test_adds_at_once_never_pass_the_limit_together(make_ledger):
    from concurrent.futures import ThreadPoolExecutor

    ledger = make_ledger()
    ledger.upgrade()

    def key(i):
        return ssh.parse_public_key("ssh-ed25519 " + wire(b"ssh-ed25519", i.to_bytes(32, "big")))

    for i in range(ssh.MAX_KEYS_PER_USER - 1):
        ledger.add_ssh_key("ada", key(i), at(i))

    def add(i):
        try:
            return ledger.add_ssh_key("ada", key(100 + i), at(100 + i))
        except TooManyKeys:
            return None

    # each add waits after its count for the others to count too (at most 2 s): without
    # a lock per user they would all count 19 and all insert
    barrier = threading.Barrier(6, timeout=2)

    @sa.event.listens_for(ledger.engine, "after_cursor_execute")
    def meet(connection, cursor, statement, *args):
        if statement.lstrip().upper().startswith("SELECT COUNT") and "ssh_keys" in statement:
            try:
                barrier.wait()
            except threading.BrokenBarrierError:  # the others wait for a lock: go on
                pass

    with ThreadPoolExecutor(6) as pool:
        added = [r for r in pool.map(add, range(6)) if r is not None]
    assert len(added) == 1 and len(ledger.ssh_keys("ada")) == ssh.MAX_KEYS_PER_USER


def test_the_ledger_takes_only_checked_keys_and_aware_times(ledger, keys):
    with pytest.raises(TypeError, match="PublicKey"):
        ledger.add_ssh_key("ada", keys["ed25519"][0], T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.add_ssh_key("ada", ssh.parse_public_key(keys["ed25519"][0]), T0.replace(tzinfo=None))
    with pytest.raises(ValueError, match="whole number"):
        ledger.remove_ssh_key("ada", "1")


def test_migration_0008_adds_and_drops_only_ssh_keys(make_ledger, keys):
    ledger = make_ledger()
    with ledger.engine.begin() as connection:
        ledger_schema.upgrade(connection, "0007")
    assert "ssh_keys" not in sa.inspect(ledger.engine).get_table_names()
    ledger.upgrade()
    ledger.check_revision()
    ledger.add_ssh_key("ada", ssh.parse_public_key(keys["ed25519"][0]), T0)
    with ledger.engine.begin() as connection:
        command.downgrade(ledger_schema.alembic_config(connection), "0007")
    tables = sa.inspect(ledger.engine).get_table_names()
    assert "ssh_keys" not in tables and "sessions" in tables


# --- into a real container -------------------------------------------------------------


@pytest.fixture
def containers(docker_client):
    api = docker_client.api
    prefix = f"jgm-sshkeys-{secrets.token_hex(4)}"
    made = []

    def start(user, server, ssh_label="1", hub="hub-ssh", running=True):
        config = api.create_container(
            IMAGE,
            command=["sleep", "300"],
            name=f"{prefix}-{len(made)}",
            labels={
                labels.MANAGED: "1",
                labels.USER: user,
                labels.SERVER: server,
                labels.SSH: ssh_label,
                labels.HUB: hub,
            },
        )
        made.append(config["Id"])
        if running:
            api.start(config["Id"])
        return config["Id"]

    yield start
    for container_id in made:
        try:
            api.remove_container(container_id, force=True)
        except docker.errors.NotFound:  # a test removed it
            pass


def cat(api, container_id, command="cat /etc/jupyter-gpu-meter/ssh/authorized_keys", user=""):
    exec_id = api.exec_create(container_id, ["sh", "-c", command], user=user)["Id"]
    return api.exec_start(exec_id).decode()


async def test_keys_are_written_into_the_users_running_ssh_servers_only(
    docker_client, containers, ledger, keys
):
    api = docker_client.api
    default = containers("ada", "")
    named = containers("ada", "gpu1")
    off = containers("ada", "nossh", ssh_label="0")
    others = containers("bob", "")
    another_hub = containers("ada", "elsewhere", hub="hub-other")
    pusher = KeyPusher(api, ledger, "hub-ssh")
    key = ledger.add_ssh_key("ada", ssh.parse_public_key(keys["ed25519"][0]), T0)
    assert await pusher.after_change("ada") == ["", "gpu1"]
    for container_id in (default, named):
        assert cat(api, container_id) == key.line + "\n"
        owner = cat(api, container_id, "stat -c '%U %a' /etc/jupyter-gpu-meter/ssh/authorized_keys")
        assert owner.split() == ["root", "644"]
        folders = "stat -c '%U %a' /etc/jupyter-gpu-meter /etc/jupyter-gpu-meter/ssh /etc"
        assert cat(api, container_id, folders).split() == ["root", "755"] * 3
        # Docker gives /etc the archive's time: now, not 1970
        assert int(cat(api, container_id, "stat -c %Y /etc")) > 1_700_000_000
    # the notebook's user reads it and cannot change it
    assert "ermission denied" in cat(
        api, default, "id -u; echo x >> /etc/jupyter-gpu-meter/ssh/authorized_keys 2>&1"
    )
    for container_id in (off, others, another_hub):
        assert "No such file" in cat(api, container_id)
    # removed: an empty file, so the key stops working at once
    ledger.remove_ssh_key("ada", key.id)
    assert await pusher.after_change("ada") == ["", "gpu1"]
    assert cat(api, default) == ""
    pusher.close()


async def test_a_started_container_gets_its_keys_and_a_gone_one_is_only_logged(
    docker_client, containers, ledger, keys, caplog
):
    api = docker_client.api
    key = ledger.add_ssh_key("ada", ssh.parse_public_key(keys["ecdsa256"][0]), T0)
    container_id = containers("ada", "gpu1")
    pusher = KeyPusher(api, ledger, "hub-ssh")
    event = {
        "Action": "start",
        "id": container_id,
        "Actor": {
            "ID": container_id,
            "Attributes": api.inspect_container(container_id)["Config"]["Labels"],
        },
    }
    pusher.on_event_soon(event)
    await asyncio.gather(*pusher.pending)
    assert cat(api, container_id) == key.line + "\n"
    # other events, SSH off, another hub: nothing written
    for changed in ({"Action": "die"}, {"ssh": "0"}, {"hub": "hub-other"}):
        attributes = dict(event["Actor"]["Attributes"])
        if "ssh" in changed:
            attributes[labels.SSH] = changed["ssh"]
        if "hub" in changed:
            attributes[labels.HUB] = changed["hub"]
        probe = {**event, **changed, "Actor": {"ID": container_id, "Attributes": attributes}}
        probe.pop("ssh", None), probe.pop("hub", None)
        cat(api, container_id, "rm /etc/jupyter-gpu-meter/ssh/authorized_keys", user="root")
        await pusher.on_event(probe)
        assert "No such file" in cat(api, container_id)
    # a container that is gone: logged, no exception, not counted
    api.remove_container(container_id, force=True)
    await pusher.on_event(event)
    assert "Writing SSH keys into container" in caplog.text
    assert pusher.write(container_id, ssh.authorized_keys_archive([])) is False
    pusher.close()


async def test_docker_away_is_logged_and_the_change_stands(ledger, keys, caplog):
    api = docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    pusher = KeyPusher(api, ledger, "hub-ssh")
    assert await pusher.after_change("ada") == []
    assert "Writing ada's SSH keys into their servers failed" in caplog.text
    pusher.close()


async def test_the_meter_writes_the_keys_when_docker_says_an_ssh_server_started(
    docker_client, ledger, keys, tmp_path
):
    """The whole path in the meter: Docker's real start event -> MeterService._handle_event
    -> the container's authorized_keys (a spawner that could not read the ledger)."""
    from traitlets.config import Config

    from jupyter_gpu_meter.container import container_labels
    from jupyter_gpu_meter.pricing import Pricing
    from jupyter_gpu_meter.service.app import MeterService
    from tests.test_meter_state import FakeHub

    api = docker_client.api
    key = ledger.add_ssh_key("ada", ssh.parse_public_key(keys["ed25519"][0]), T0)
    hub = f"hub-sshmeter-{secrets.token_hex(3)}"
    url = ledger.db.engine.url.render_as_string(hide_password=False)
    meter = MeterService(db_url=url, config=Config({"HubIdentity": {"hub_id": hub}}))
    meter.writer_id = "test"
    meter._setup(docker_api=api, hub_api=FakeHub())
    assert meter.ssh_keys is not None and meter.ssh_keys.hub_id == hub
    found = {
        **container_labels(
            user="ada", server="", gpu_uuids=(), gpu_model="", profile="cpu", hub_id=hub
        ),
        **Pricing(cpu_price="0.10").snapshot("", 0).to_labels(),
        labels.SSH: "1",
    }
    container = api.create_container(
        IMAGE, command=["sleep", "300"], name=hub, labels=found, stop_signal="SIGKILL"
    )["Id"]
    try:
        since_ns = time.time_ns() - 10**9
        api.start(container)
        # the meter's own reading of Docker's events, as it replays them after a restart
        events = meter.tracker.events(since_ns, time.time_ns() + 10**9)
        (event,) = [e for e in events if e.get("Action") == "start" and e["id"] == container]
        await meter._handle_event(event)
        await asyncio.gather(*meter.ssh_keys.pending)
        assert cat(api, container) == key.line + "\n"
    finally:
        api.remove_container(container, force=True)
        meter.ssh_keys.close()
        meter.ledger_executor.shutdown()
        meter.ledger.close()
