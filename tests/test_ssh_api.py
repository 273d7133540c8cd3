"""SSH keys over HTTP and on the usage page: the real web app on a real SQLite ledger and
the real Docker engine (a container labelled for SSH gets the keys); only the hub's answer
to "whose token is this?" is injected, as in test_usage_web.py."""

import json
import re
import secrets
from html import unescape
from types import SimpleNamespace
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from jupyter_gpu_meter import labels, ssh
from jupyter_gpu_meter.ledger import Ledger
from jupyter_gpu_meter.pricing import Pricing
from jupyter_gpu_meter.service.auth import READ_ALL_SCOPE
from jupyter_gpu_meter.service.ssh_api import SSHKeys, server_url
from jupyter_gpu_meter.service.ssh_push import KeyPusher
from jupyter_gpu_meter.service.state import MeterState
from tests.hub import IMAGE
from tests.test_ssh_keys import cat, wire
from tests.test_usage_web import ACCESS, KnownTokens, fetch, logged_in_browser, serve_app

HUB = "hub-sshapi"
STOP = "delete:servers"
ED25519 = "ssh-ed25519 " + wire(b"ssh-ed25519", bytes(range(32)))
ECDSA = "ecdsa-sha2-nistp256 " + wire(b"ecdsa-sha2-nistp256", b"nistp256", b"\x04" + 64 * b"p")


class Tokens(KnownTokens):
    models = {
        "ada-token": {"kind": "user", "name": "ada", "scopes": [ACCESS, f"{STOP}!user=ada"]},
        "bob-token": {"kind": "user", "name": "bob", "scopes": [ACCESS, f"{STOP}!user=bob"]},
        "auditor-token": {"kind": "user", "name": "carol", "scopes": [ACCESS, READ_ALL_SCOPE]},
        "admin-token": {"kind": "user", "name": "admin", "admin": True, "scopes": [ACCESS, STOP]},
        # an admin's token scoped down to reading: sees keys, removes none
        "admin-read-token": {"kind": "user", "name": "admin", "admin": True, "scopes": [ACCESS]},
    }


@pytest.fixture
def containers(docker_client):
    """ada's running server "gpu1", labelled for SSH (removed afterwards)."""
    api = docker_client.api
    name = f"jgm-sshapi-{secrets.token_hex(4)}"
    labelled = {
        labels.MANAGED: "1",
        labels.USER: "ada",
        labels.SERVER: "gpu1",
        labels.SSH: "1",
        labels.HUB: HUB,
    }
    container = api.create_container(IMAGE, command=["sleep", "300"], name=name, labels=labelled)
    api.start(container["Id"])
    yield SimpleNamespace(api=api, gpu1=container["Id"])
    api.remove_container(container["Id"], force=True)


def serve(tmp_path, pusher=None, ssh_settings=None):
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger-{secrets.token_hex(3)}.sqlite")
    ledger.upgrade()
    state = MeterState()
    meter = SimpleNamespace(
        ledger=ledger,
        pricing=Pricing(currency="EUR"),
        state=state,
        health=lambda: {"gpu_sampling": "off", "pending_writes": 0, **state.health()},
    )
    if pusher is not None:
        pusher.ledger = ledger
    server, app = serve_app(meter, hub_auth=Tokens.for_tests(access_scopes={ACCESS}), ssh=pusher)
    app.ledger = ledger
    return server, app


@pytest.fixture
async def app(tmp_path):
    server, app = serve(tmp_path)
    yield app
    server.stop()
    app.ledger.close()


async def call(app, path, token, method="GET", data=None, ok=True):
    body = None if data is None else (data if isinstance(data, str) else json.dumps(data))
    return await fetch(app, path, token, method=method, body=body, ok=ok)


def as_json(response):
    return json.loads(response.body)


async def test_a_user_adds_lists_and_removes_their_keys_written_into_their_servers(
    tmp_path, containers
):
    pusher = KeyPusher(containers.api, None, HUB)
    server, app = serve(tmp_path, pusher)
    added = await call(app, "api/ssh-keys", "ada-token", "POST", {"key": ED25519 + " ada@laptop"})
    assert added.code == 201
    body = as_json(added)
    assert body["servers_updated"] == ["gpu1"]
    key = body["key"]
    assert key["fingerprint"] == ssh.parse_public_key(ED25519).fingerprint
    assert key["type"] == "ssh-ed25519" and key["comment"] == "ada@laptop"
    assert key["public_key"] == ED25519 and key["added_at"] == "2026-11-20T12:00:00Z"
    assert cat(containers.api, containers.gpu1) == ED25519 + " ada@laptop\n"

    listed = as_json(await call(app, "api/ssh-keys", "ada-token"))
    assert listed == {"user": "ada", "keys": [key]}
    assert as_json(await call(app, "api/ssh-keys", "bob-token")) == {"user": "bob", "keys": []}

    removed = await call(app, f"api/ssh-keys/{key['id']}", "ada-token", "DELETE")
    assert as_json(removed) == {"removed": key, "servers_updated": ["gpu1"]}
    assert cat(containers.api, containers.gpu1) == ""
    assert as_json(await call(app, "api/ssh-keys", "ada-token"))["keys"] == []
    server.stop()
    pusher.close()
    app.ledger.close()


async def test_refusals_say_what_is_allowed(app):
    cases = [
        ({"key": "ssh-rsa AAAA"}, 400, "allowed: one public key on one line"),
        ({"key": f'command="sh" {ED25519}'}, 400, "options before the key type"),
        ({"key": f"{ED25519}\n{ECDSA}"}, 400, "more than one line"),
        ({"key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n"}, 400, "PRIVATE key"),
        ({"key": 42}, 400, "got int, not text"),
        ({"key": ED25519, "user": "bob"}, 400, 'send a JSON object with only "key"'),
        ([ED25519], 400, 'send a JSON object with only "key"'),
        ("not json", 400, 'send a JSON object with only "key"'),
    ]
    for data, status, message in cases:
        response = await call(app, "api/ssh-keys", "ada-token", "POST", data, ok=False)
        assert response.code == status, data
        assert message in as_json(response)["message"], data
    await call(app, "api/ssh-keys", "ada-token", "POST", {"key": ED25519})
    again = await call(app, "api/ssh-keys", "ada-token", "POST", {"key": ED25519}, ok=False)
    assert again.code == 409 and "has this key" in as_json(again)["message"]
    for i in range(ssh.MAX_KEYS_PER_USER - 1):
        key = "ssh-ed25519 " + wire(b"ssh-ed25519", (i + 1000).to_bytes(32, "big"))
        await call(app, "api/ssh-keys", "ada-token", "POST", {"key": key})
    full = await call(app, "api/ssh-keys", "ada-token", "POST", {"key": ECDSA}, ok=False)
    assert full.code == 409 and "remove one before adding another" in as_json(full)["message"]
    missing = await call(app, "api/ssh-keys/999999", "ada-token", "DELETE", ok=False)
    assert (
        missing.code == 404 and "ada has no SSH key with id 999999" in as_json(missing)["message"]
    )
    huge = await call(app, f"api/ssh-keys/{10**30}", "ada-token", "DELETE", ok=False)
    assert huge.code == 404


async def test_who_may_see_add_and_remove_whose_keys(app):
    key = as_json(await call(app, "api/ssh-keys", "ada-token", "POST", {"key": ED25519}))["key"]
    remove = f"api/ssh-keys/{key['id']}"
    # listing: own; admins and read-all holders anyone's
    assert (await call(app, "api/ssh-keys?user=ada", "bob-token", ok=False)).code == 403
    for token in ("auditor-token", "admin-token", "admin-read-token"):
        assert as_json(await call(app, "api/ssh-keys?user=ada", token))["keys"] == [key]
    # adding: nobody for another, admins neither
    for token in ("bob-token", "admin-token"):
        response = await call(app, "api/ssh-keys?user=ada", token, "POST", {"key": ECDSA}, ok=False)
        assert response.code == 403 and "everyone adds their own" in as_json(response)["message"]
    # removing: bob sees no such key of his, and may not name ada's
    assert (await call(app, remove, "bob-token", "DELETE", ok=False)).code == 404
    for token in ("bob-token", "auditor-token", "admin-read-token"):
        response = await call(app, remove + "?user=ada", token, "DELETE", ok=False)
        assert response.code == 403 and f"holds {STOP}" in as_json(response)["message"]
    removed = await call(app, remove + "?user=ada", "admin-token", "DELETE")
    assert as_json(removed) == {"removed": key, "servers_updated": []}


async def test_the_usage_page_lists_adds_and_removes_keys_with_its_xsrf_token(app):
    browser, xsrf = await logged_in_browser(app, "ada-token", "")

    async def post(form, ok=True):
        response = await fetch(
            app, "ssh-keys", method="POST", body=urlencode(form), headers=browser, ok=False
        )
        assert response.code == (303 if ok else 403), response.body
        return parse_qs(urlsplit(response.headers.get("Location", "")).query).get("ssh", [""])[0]

    # a cookie alone is not enough
    await post({"action": "add", "key": ED25519}, ok=False)
    assert app.ledger.ssh_keys("ada") == []
    assert await post({"_xsrf": xsrf, "action": "add", "key": ED25519 + " laptop"}) == (
        f"key {ssh.parse_public_key(ED25519).fingerprint} added"
    )
    message = await post({"_xsrf": xsrf, "action": "add", "key": "no-pty " + ECDSA})
    assert message.startswith("not done: options before the key type")
    assert (await post({"_xsrf": xsrf, "action": "fly"})).startswith("not done: say what to do")
    assert (await post({"_xsrf": xsrf, "action": "remove", "id": "x"})).startswith(
        "not done: say which key"
    )
    page = (await fetch(app, "?" + urlencode({"ssh": "key added"}), headers=browser)).body.decode()
    (key,) = app.ledger.ssh_keys("ada")
    assert 'id="ssh"' in page and key.fingerprint in page and "laptop" in page
    assert 'id="ssh-message"' in page and "key added" in page
    assert f'name="id" value="{key.id}"' in page and 'id="add-ssh-key"' in page
    pip = re.search(r'id="ssh-pip"><code>([^<]*)</code>', page).group(1)
    assert re.fullmatch(
        r"pip install http://127\.0\.0\.1:\d+/services/gpu-meter/ssh/"
        r"jupyter_gpu_meter_ssh-.+-py3-none-any\.whl",
        unescape(pip),
    )
    (snippet,) = re.findall(r'data-server="">\s*<code>([^<]*)</code>', page)
    assert "Host gpu-ada\n" in unescape(snippet)
    assert re.search(
        r"ProxyCommand jupyter-gpu-meter-ssh http://127\.0\.0\.1:\d+/user/ada/\n", unescape(snippet)
    )
    assert await post({"_xsrf": xsrf, "action": "remove", "id": str(key.id)}) == (
        f"key {key.fingerprint} removed"
    )
    assert app.ledger.ssh_keys("ada") == []


async def test_an_admin_sees_anothers_keys_and_may_remove_them_but_not_add(app):
    await call(app, "api/ssh-keys", "ada-token", "POST", {"key": ED25519 + " ada@laptop"})
    (key,) = app.ledger.ssh_keys("ada")
    page = (await fetch(app, "?user=ada", "admin-token")).body.decode()
    assert key.fingerprint in page and f'name="id" value="{key.id}"' in page
    assert 'id="add-ssh-key"' not in page and "gpu-meter-ssh-config" not in page
    page = (await fetch(app, "?user=ada", "admin-read-token")).body.decode()
    assert key.fingerprint in page and f'name="id" value="{key.id}"' not in page
    page = (await fetch(app, "?user=ada", "auditor-token")).body.decode()
    assert key.fingerprint in page and "gpu-meter-remove-key" not in page
    # a token posts the form too (no XSRF needed); another's: 403 unless an admin may
    form = urlencode({"action": "remove", "id": key.id, "user": "ada"})
    refused = await fetch(app, "ssh-keys", "bob-token", method="POST", body=form, ok=False)
    assert refused.code == 403
    form_add = urlencode({"action": "add", "key": ECDSA, "user": "ada"})
    refused = await fetch(app, "ssh-keys", "admin-token", method="POST", body=form_add, ok=False)
    assert refused.code == 403
    done = await fetch(app, "ssh-keys", "admin-token", method="POST", body=form, ok=False)
    assert done.code == 303 and "user=ada" in done.headers["Location"]
    assert app.ledger.ssh_keys("ada") == []


async def test_the_snippet_names_each_running_ssh_server_and_the_configured_address(
    tmp_path, containers
):
    pusher = KeyPusher(containers.api, None, HUB)
    settings = SSHKeys(public_url="https://hub.example.org/")
    assert settings.public_url == "https://hub.example.org"
    server, app = serve(tmp_path, pusher)
    for rule in app.application.wildcard_router.rules:  # the handlers share one context
        context = (rule.target_kwargs or {}).get("context")
        if context is not None:
            context.ssh_settings = settings
    page = unescape((await fetch(app, "", "ada-token")).body.decode())
    assert "ProxyCommand jupyter-gpu-meter-ssh https://hub.example.org/user/ada/gpu1/" in page
    assert "Host gpu-ada-gpu1" in page and "Host gpu-ada\n" not in page
    assert "pip install https://hub.example.org/services/gpu-meter/ssh/" in page
    server.stop()
    pusher.close()
    app.ledger.close()


def test_settings_and_urls():
    with pytest.raises(Exception, match="give the hub's address with its scheme"):
        SSHKeys(public_url="hub.example.org")
    assert server_url("https://h/", "ada@x.org", "") == "https://h/user/ada@x.org/"
    assert server_url("https://h/", "a b", "g/1") == "https://h/user/a%20b/g%2F1/"
