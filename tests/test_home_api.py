"""Snapshots and homes over HTTP: the real web app, the real Docker engine, no hub.

As in test_usage_web.py, only the hub's answer to "whose token is this?" is
injected. Volumes are named with a unique prefix and removed afterwards.
"""

import asyncio
import json
import re
import secrets
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace
from urllib.parse import quote, urlencode

import pytest

from jupyter_gpu_meter import homes, snapshots
from jupyter_gpu_meter.ledger import Ledger
from jupyter_gpu_meter.ledger.records import StoragePeriod
from jupyter_gpu_meter.pricing import Pricing
from jupyter_gpu_meter.service.home_api import HomeService
from jupyter_gpu_meter.service.state import MeterState
from tests.hub import IMAGE
from tests.test_snapshots import CHANGE, POPULATE, manifest, run
from tests.test_usage_web import (
    ACCESS,
    NOW,
    KnownTokens,
    fetch,
    logged_in_browser,
    serve_app,
)

pytestmark = pytest.mark.slow

HUB = "hub-homeapi"
STOP = "delete:servers"


class Tokens(KnownTokens):
    models = {
        "ada-token": {"kind": "user", "name": "ada", "scopes": [ACCESS, f"{STOP}!user=ada"]},
        "bob-token": {"kind": "user", "name": "bob", "scopes": [ACCESS, f"{STOP}!user=bob"]},
        # ada's token scoped down to reading: no changes
        "ada-read-token": {"kind": "user", "name": "ada", "scopes": [ACCESS]},
        "admin-token": {
            "kind": "user",
            "name": "admin",
            "admin": True,
            "scopes": [ACCESS, "admin:servers", STOP],
        },
        # an admin's token without delete:servers
        "admin-read-token": {"kind": "user", "name": "admin", "admin": True, "scopes": [ACCESS]},
    }


@pytest.fixture
def prefix(docker_client):
    api = docker_client.api
    prefix = f"jgm-homeapi-{secrets.token_hex(4)}"
    yield prefix
    for container in api.containers(all=True):
        if any(prefix in name for name in container.get("Names") or []):
            api.remove_container(container["Id"], force=True)
    for volume in api.volumes().get("Volumes") or []:
        if prefix in volume["Name"]:
            api.remove_volume(volume["Name"], force=True)


class WatchedHomeService(HomeService):
    """Says when an operation on a home has begun (``working``)."""

    async def on_home(self, owner, what, func, /, *args, **kwargs):
        self.working.set()
        return await super().on_home(owner, what, func, *args, **kwargs)


@pytest.fixture
def service(docker_client, prefix):
    settings = homes.HomeVolumes(name_template=prefix + "-{username}", helper_image=IMAGE)
    service = WatchedHomeService(docker_client.api, settings, HUB)
    service.working = asyncio.Event()
    yield service
    service.executor.shutdown(wait=True)


@pytest.fixture
def ada_home(service):
    home = service.home_of("ada")
    homes.ensure_home(
        service.api,
        home,
        user="ada",
        hub_id=HUB,
        owner="1000:100",
        image=IMAGE,
        mount_path="/home/jovyan",
    )
    run(service.api, home, POPULATE)
    return home


@pytest.fixture
async def app(tmp_path, service):
    server, app = serve(tmp_path, service)
    yield app
    server.stop()
    app.ledger.close()


def as_json(response):
    return json.loads(response.body)


async def call(app, path, token, method="GET", data=None, ok=True):
    body = None if data is None else json.dumps(data)
    if method == "POST" and body is None:
        body = ""
    return await fetch(app, path, token, method=method, body=body, ok=ok)


async def test_a_user_takes_lists_and_restores_their_own_snapshots(app, service, ada_home):
    before = manifest(service.api, ada_home)
    taken = await call(app, "api/snapshots", "ada-token", "POST", {"label": "before"})
    assert taken.code == 201
    snapshot = as_json(taken)["snapshot"]
    assert snapshot["label"] == "before" and snapshot["user"] == "ada"
    assert snapshots.ID_PATTERN.match(snapshot["id"]) and snapshot["size_bytes"] > 0
    listed = as_json(await call(app, "api/snapshots", "ada-token"))
    assert listed["user"] == "ada" and listed["home"] == ada_home
    assert [s["id"] for s in listed["snapshots"]] == [snapshot["id"]]

    run(service.api, ada_home, CHANGE)
    restore = f"api/snapshots/{snapshot['id']}/restore"
    refused = await call(app, restore, "ada-token", "POST", {}, ok=False)
    assert refused.code == 400 and '{"confirm": true}' in as_json(refused)["message"]
    restored = await call(app, restore, "ada-token", "POST", {"confirm": True})
    assert as_json(restored)["restored"]["id"] == snapshot["id"]
    assert manifest(service.api, ada_home) == before

    deleted = await call(app, f"api/snapshots/{snapshot['id']}", "ada-token", "DELETE")
    assert as_json(deleted)["deleted"]["id"] == snapshot["id"]
    assert as_json(await call(app, "api/snapshots", "ada-token"))["snapshots"] == []


async def test_listed_snapshots_show_the_size_the_storage_pass_measured(app, service, ada_home):
    snapshot = as_json(await call(app, "api/snapshots", "ada-token", "POST", {}))["snapshot"]
    listed = as_json(await call(app, "api/snapshots", "ada-token"))["snapshots"]
    assert [s["size_bytes"] for s in listed] == [None]  # not measured yet
    app.ledger.add_storage_periods(
        [
            StoragePeriod(
                user="ada",
                volume=snapshot["volume"],
                kind=homes.SNAPSHOT,
                started_at=NOW - timedelta(minutes=10),
                ended_at=NOW,
                size_bytes=123_456_789,
                price_per_gb_month=Decimal("0.10"),
                currency="EUR",
            )
        ],
        NOW,
    )
    listed = as_json(await call(app, "api/snapshots", "ada-token"))["snapshots"]
    assert [s["size_bytes"] for s in listed] == [123_456_789]
    page = (await fetch(app, "", "ada-token")).body.decode()
    assert re.search(r'<td data-label="Size">\s*0.12 GB\s*</td>', page), page


async def test_nobody_reaches_another_users_snapshots(app, service, ada_home):
    snapshot = as_json(await call(app, "api/snapshots", "ada-token", "POST", {}))["snapshot"]
    sid = snapshot["id"]
    # bob's own view has none of ada's; ada's ids look like any others to him
    assert as_json(await call(app, "api/snapshots", "bob-token"))["snapshots"] == []
    for method, path, data in (
        ("DELETE", f"api/snapshots/{sid}", None),
        ("POST", f"api/snapshots/{sid}/restore", {"confirm": True}),
    ):
        response = await call(app, path, "bob-token", method, data, ok=False)
        assert response.code == 404, path
        assert as_json(response)["message"].endswith("bob has no snapshots")
        response = await call(app, path + "?user=ada", "bob-token", method, data, ok=False)
        assert response.code == 403 and "delete:servers for ada" in as_json(response)["message"]
    listing = await call(app, "api/snapshots?user=ada", "bob-token", ok=False)
    assert listing.code == 403
    taking = await call(app, "api/snapshots?user=ada", "bob-token", "POST", {}, ok=False)
    assert taking.code == 403
    # a read-only token of ada's own: reading yes, changing no
    assert as_json(await call(app, "api/snapshots", "ada-read-token"))["snapshots"]
    refused = await call(app, f"api/snapshots/{sid}", "ada-read-token", "DELETE", ok=False)
    assert refused.code == 403
    # admins act on anyone's
    assert as_json(await call(app, "api/snapshots?user=ada", "admin-token"))["snapshots"]
    await call(app, f"api/snapshots/{sid}?user=ada", "admin-token", "DELETE")
    assert snapshots.list_snapshots(service.api, hub_id=HUB, user="ada") == []


async def test_refusals_say_why(app, service, ada_home, prefix):
    bad = await call(app, "api/snapshots", "ada-token", "POST", {"label": "<b>"}, ok=False)
    assert bad.code == 400 and "snapshot label" in as_json(bad)["message"]
    extra = await call(app, "api/snapshots", "ada-token", "POST", {"name": "x"}, ok=False)
    assert extra.code == 400 and "give only 'label'" in as_json(extra)["message"]
    not_json = await fetch(app, "api/snapshots", "ada-token", method="POST", body="[", ok=False)
    assert not_json.code == 400
    no_home = await call(app, "api/snapshots", "bob-token", "POST", {}, ok=False)
    assert no_home.code == 404 and "bob has no home volume" in as_json(no_home)["message"]
    missing = await call(app, "api/snapshots/nope/restore", "ada-token", "POST", ok=False)
    assert missing.code == 400  # no confirm: refused before anything is looked up
    missing = await call(
        app, "api/snapshots/nope/restore", "ada-token", "POST", {"confirm": True}, ok=False
    )
    assert missing.code == 404 and "ada has no snapshots" in as_json(missing)["message"]

    sid = as_json(await call(app, "api/snapshots", "ada-token", "POST", {}))["snapshot"]["id"]
    server = service.api.create_container(
        IMAGE,
        command=["sleep", "300"],
        name=f"{prefix}-server",
        host_config=service.api.create_host_config(binds=[f"{ada_home}:/home/jovyan:rw"]),
    )
    service.api.start(server)
    busy = await call(
        app, f"api/snapshots/{sid}/restore", "ada-token", "POST", {"confirm": True}, ok=False
    )
    assert busy.code == 409 and "stop the server first" in as_json(busy)["message"]
    # a snapshot of a running server is allowed
    assert (await call(app, "api/snapshots", "ada-token", "POST", {})).code == 201
    service.api.remove_container(server, force=True)


async def test_a_long_copy_keeps_no_other_request_waiting(app, service, ada_home):
    run(service.api, ada_home, "head -c 600000000 /dev/zero > /home-volume/big.bin")
    taking = asyncio.ensure_future(call(app, "api/snapshots", "ada-token", "POST", {}))
    await service.working.wait()
    # a second operation on the same home: refused at once
    second = await call(app, "api/snapshots", "ada-token", "POST", {}, ok=False)
    assert second.code == 409 and "a snapshot of ada's home is running" in second.body.decode()
    # other requests are answered while the copy runs
    listed = await call(app, "api/snapshots", "admin-token")
    assert as_json(listed)["user"] == "admin"
    assert not taking.done()
    assert (await taking).code == 201


async def test_admins_list_and_remove_homes(app, service, ada_home, prefix):
    sid = as_json(await call(app, "api/snapshots", "ada-token", "POST", {}))["snapshot"]["id"]
    homes_list = as_json(await call(app, "api/homes", "admin-token"))["homes"]
    assert [(h["user"], h["volume"], h["snapshots"]) for h in homes_list] == [("ada", ada_home, 1)]
    assert (await call(app, "api/homes", "ada-token", ok=False)).code == 403
    for token in ("ada-token", "admin-read-token"):
        refused = await call(app, "api/homes/ada", token, "DELETE", ok=False)
        assert refused.code == 403 and "for hub admins" in as_json(refused)["message"]
    bad = await call(app, "api/homes/ada?snapshots=yes", "admin-token", "DELETE", ok=False)
    assert bad.code == 400
    server = service.api.create_container(
        IMAGE,
        command=["sleep", "300"],
        name=f"{prefix}-server",
        host_config=service.api.create_host_config(binds=[f"{ada_home}:/home/jovyan:rw"]),
    )
    service.api.start(server)
    busy = await call(app, "api/homes/ada", "admin-token", "DELETE", ok=False)
    assert busy.code == 409
    service.api.remove_container(server, force=True)
    removed = as_json(await call(app, "api/homes/ada", "admin-token", "DELETE"))["removed"]
    assert removed == {"user": "ada", "volumes": [ada_home], "snapshots": []}
    # the snapshot stays: ada can bring her files back
    assert [
        s["id"] for s in as_json(await call(app, "api/snapshots", "ada-token"))["snapshots"]
    ] == [sid]
    gone = await call(app, "api/homes/ada", "admin-token", "DELETE", ok=False)
    assert gone.code == 404
    unknown = await call(
        app, "api/homes/" + quote("nobody at all"), "admin-token", "DELETE", ok=False
    )
    assert unknown.code == 404 and "nobody at all has no home" in as_json(unknown)["message"]


async def test_the_pages_take_restore_and_remove_with_their_xsrf_token(app, service, ada_home):
    before = manifest(service.api, ada_home)
    browser, xsrf = await logged_in_browser(app, "ada-token", "")
    page = (await fetch(app, "", headers=browser)).body.decode()
    assert 'id="home-snapshots"' in page and "No snapshots." in page

    async def post(path, form, headers=browser):
        return await fetch(
            app, path, method="POST", body=urlencode(form), headers=headers, ok=False
        )

    forged = await post("snapshots", {"action": "take"})
    assert forged.code == 403 and snapshots.list_snapshots(service.api, hub_id=HUB) == []
    taken = await post("snapshots", {"action": "take", "label": "page", "_xsrf": xsrf})
    assert taken.code == 303 and "taken" in taken.headers["Location"]
    (snapshot,) = snapshots.list_snapshots(service.api, hub_id=HUB, user="ada")
    page = (await fetch(app, "", headers=browser)).body.decode()
    assert f'data-snapshot="{snapshot.id}"' in page and "Replace the home with" in page

    run(service.api, ada_home, CHANGE)
    unconfirmed = await post("snapshots", {"action": "restore", "id": snapshot.id, "_xsrf": xsrf})
    assert "confirm+the+restore+first" in unconfirmed.headers["Location"]
    assert manifest(service.api, ada_home) != before
    restored = await post(
        "snapshots", {"action": "restore", "id": snapshot.id, "confirm": "yes", "_xsrf": xsrf}
    )
    assert "restored+into+the+home" in restored.headers["Location"]
    assert manifest(service.api, ada_home) == before

    # the admin page lists homes with a Remove button; the form removes one
    admin, admin_xsrf = await logged_in_browser(app, "admin-token", "admin")
    page = (await fetch(app, "admin", headers=admin)).body.decode()
    assert 'id="homes-table"' in page and "Remove ada's home" in page
    response = await post(
        "admin/homes",
        {"user": "ada", "confirm": "yes", "snapshots": "yes", "_xsrf": admin_xsrf},
        headers=admin,
    )
    location = response.headers["Location"]
    assert re.search(r"removed\+the\+home\+of\+ada\+and\+1\+snapshot", location), location
    assert snapshots.list_homes(service.api, hub_id=HUB) == []
    # a user's browser cannot
    refused = await post("admin/homes", {"user": "ada", "confirm": "yes", "_xsrf": xsrf})
    assert refused.code == 403


def test_the_openapi_document_describes_the_home_routes():
    import yaml

    from jupyter_gpu_meter.service.api import OPENAPI

    document = yaml.safe_load(OPENAPI.read_text())
    assert set(document["paths"]) >= {
        "/api/snapshots",
        "/api/snapshots/{id}",
        "/api/snapshots/{id}/restore",
        "/api/homes",
        "/api/homes/{user}",
    }


def serve(tmp_path, service):
    """The web app with `service` for its homes and a ledger of its own: (its server, what
    tests use, with ``ledger``)."""
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger-{secrets.token_hex(3)}.sqlite")
    ledger.upgrade()
    state = MeterState()
    meter = SimpleNamespace(
        ledger=ledger,
        pricing=Pricing(currency="EUR"),
        state=state,
        health=lambda: {"gpu_sampling": "off", "pending_writes": 0, **state.health()},
    )
    server, app = serve_app(meter, hub_auth=Tokens.for_tests(access_scopes={ACCESS}), homes=service)
    app.ledger = ledger
    return server, app


async def test_homes_off_or_docker_away_are_said_so(tmp_path, prefix):
    import docker

    off = HomeService(
        docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.41"),
        homes.HomeVolumes(enabled=False),
        HUB,
    )
    server, app = serve(tmp_path, off)
    response = await call(app, "api/snapshots", "ada-token", ok=False)
    assert response.code == 404 and "c.HomeVolumes.enabled = False" in as_json(response)["message"]
    page = (await fetch(app, "", "ada-token")).body.decode()
    assert "home-snapshots" not in page  # no section at all
    server.stop()

    away = HomeService(
        docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.41"),
        homes.HomeVolumes(name_template=prefix + "-{username}"),
        HUB,
    )
    server, app = serve(tmp_path, away)
    response = await call(app, "api/snapshots", "ada-token", ok=False)
    assert response.code == 503
    assert "the Docker engine did not answer as expected" in as_json(response)["message"]
    page = (await fetch(app, "", "ada-token")).body.decode()
    assert "the snapshots cannot be listed now" in page
    admin = (await fetch(app, "admin", "admin-token")).body.decode()
    assert "homes cannot be listed now" in admin
    server.stop()


async def test_an_incomplete_snapshot_and_bad_forms_are_refused(app, service, ada_home):
    sid = as_json(await call(app, "api/snapshots", "ada-token", "POST", {}))["snapshot"]["id"]
    (snapshot,) = snapshots.list_snapshots(service.api, hub_id=HUB, user="ada")
    run(service.api, snapshot.volume, "rm /home-volume/complete")
    response = await call(
        app, f"api/snapshots/{sid}/restore", "ada-token", "POST", {"confirm": True}, ok=False
    )
    assert response.code == 409 and "the snapshot is incomplete" in as_json(response)["message"]

    browser, xsrf = await logged_in_browser(app, "ada-token", "")
    nothing = await fetch(
        app,
        "snapshots",
        method="POST",
        body=urlencode({"action": "frobnicate", "_xsrf": xsrf}),
        headers=browser,
        ok=False,
    )
    assert "say+what+to+do" in nothing.headers["Location"]
    admin, admin_xsrf = await logged_in_browser(app, "admin-token", "admin")
    unconfirmed = await fetch(
        app,
        "admin/homes",
        method="POST",
        body=urlencode({"user": "ada", "_xsrf": admin_xsrf}),
        headers=admin,
        ok=False,
    )
    assert "confirm+the+removal" in unconfirmed.headers["Location"]
    assert [h.user for h in snapshots.list_homes(service.api, hub_id=HUB)] == ["ada"]


async def test_a_broken_helper_image_is_the_hubs_500(tmp_path, prefix, docker_client):
    settings = homes.HomeVolumes(
        name_template=prefix + "-{username}", helper_image="jgm-no-such-image"
    )
    broken = HomeService(docker_client.api, settings, HUB)
    home = broken.home_of("ada")
    homes.ensure_home(
        broken.api,
        home,
        user="ada",
        hub_id=HUB,
        owner="1000:100",
        image=IMAGE,
        mount_path="/home/jovyan",
    )
    server, app = serve(tmp_path, broken)
    response = await call(app, "api/snapshots", "ada-token", "POST", {}, ok=False)
    assert response.code == 500
    assert as_json(response)["message"].startswith(
        "not done, the home is unchanged: helper image 'jgm-no-such-image' not found"
    )
    browser, xsrf = await logged_in_browser(app, "ada-token", "")
    page = await fetch(
        app,
        "snapshots",
        method="POST",
        body=urlencode({"action": "take", "_xsrf": xsrf}),
        headers={**browser, "Accept": "text/html"},
        ok=False,
    )
    assert page.code == 500 and "helper image" in page.body.decode()
    server.stop()
