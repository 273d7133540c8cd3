"""Homes and snapshots over HTTP: ``api/snapshots``, ``api/homes`` and the pages' forms.

Who may do what (checked against the caller's token, as stopping a server is):

- listing snapshots: the caller's own; anyone's for hub admins and holders
  of ``custom:gpu-meter:read-all`` (``?user=``);
- taking, restoring and deleting snapshots of `user`: the token needs
  ``delete:servers`` for `user`'s servers (:meth:`Viewer.may_stop`) —
  replacing someone's files is at least as grave as stopping their server.
  Users hold it for their own (the hub's ``self`` scope), hub admins for
  everyone;
- listing homes: hub admins and read-all holders; removing a home: hub
  admins whose token may stop that user's servers.

Every Docker call and copy runs in :class:`HomeService`'s threads, so a copy
of a large home keeps no other request waiting. One operation per home at a
time in this process (a second gets a 409 at once); helper containers named
per home keep other processes out too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import docker.errors
import requests
from tornado import web

from .. import homes, snapshots
from ..clock import utcnow
from ..identity import HubIdentity
from .api import APIHandler
from .hubapi import STOP_SCOPE
from .pages import PageHandler, may_stop

log = logging.getLogger(__name__)


class HomeService:
    """The meter's Docker side of homes and snapshots; the event loop owns ``busy``.

    `api` is a docker-py ``APIClient``; `settings` the hub's
    :class:`~jupyter_gpu_meter.homes.HomeVolumes`. Blocking work goes to
    `threads` worker threads (copies of large homes take minutes); `clock` dates snapshots.
    """

    def __init__(self, api, settings: homes.HomeVolumes, hub_id: str, *, threads=4, clock=utcnow):
        self.api = api
        self.clock = clock
        self.settings = settings
        self.hub_id = hub_id
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="gpu-meter-homes")
        #: home volume -> what runs on it now (changed on the loop only)
        self.busy: dict[str, str] = {}

    @classmethod
    def from_meter(cls, meter) -> HomeService | None:
        """The meter's, from its config and Docker client; None without a Docker client."""
        api = getattr(meter, "docker_api", None)
        if api is None:
            return None
        parent = meter if hasattr(meter, "config") else None
        hub_id, clock = HubIdentity(parent=parent).hub_id, getattr(meter, "clock", utcnow)
        return cls(api, homes.HomeVolumes(parent=parent), hub_id, clock=clock)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def home_of(self, user: str) -> str:
        return self.settings.volume_name(user, self.hub_id)

    async def call(self, func, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: func(*args, **kwargs))

    async def on_home(self, owner: str, what: str, func, /, *args, **kwargs):
        """`func` in a thread, as the one operation on `owner`'s home; 409 if one runs."""
        home = self.home_of(owner)
        running = self.busy.get(home)
        if running is not None:
            raise web.HTTPError(
                409, "%s", f"{running} of {owner}'s home is running: try again when it is done"
            )
        self.busy[home] = what
        try:
            return await self.call(func, *args, **kwargs)
        finally:
            del self.busy[home]

    # --- the operations, as the handlers and pages call them ------------------------------

    async def list(self, user: str) -> list[snapshots.Snapshot]:
        return await self.call(snapshots.list_snapshots, self.api, hub_id=self.hub_id, user=user)

    async def find(self, user: str, snapshot_id: str) -> snapshots.Snapshot:
        return await self.call(
            snapshots.find_snapshot, self.api, snapshot_id, hub_id=self.hub_id, user=user
        )

    async def take(self, user: str, label: str) -> snapshots.Snapshot:
        snapshots.check_label(label)  # a bad label is refused before anything is copied
        return await self.on_home(
            user,
            "a snapshot",
            snapshots.take_snapshot,
            self.api,
            self.home_of(user),
            user=user,
            hub_id=self.hub_id,
            helper_image=self.settings.helper_image,
            label=label,
            clock=self.clock,
        )

    async def restore(self, user: str, snapshot_id: str) -> snapshots.Snapshot:
        snapshot = await self.find(user, snapshot_id)
        await self.on_home(
            user,
            "a restore",
            snapshots.restore_snapshot,
            self.api,
            snapshot,
            self.home_of(user),
            user=user,
            hub_id=self.hub_id,
            helper_image=self.settings.helper_image,
        )
        return snapshot

    async def delete(self, user: str, snapshot_id: str) -> snapshots.Snapshot:
        snapshot = await self.find(user, snapshot_id)
        await self.call(snapshots.delete_snapshot, self.api, snapshot)
        return snapshot

    async def homes(self) -> list[snapshots.Home]:
        return await self.call(snapshots.list_homes, self.api, hub_id=self.hub_id)

    async def remove_home(self, user: str, with_snapshots: bool) -> dict:
        return await self.on_home(
            user,
            "a removal",
            snapshots.remove_home,
            self.api,
            user,
            hub_id=self.hub_id,
            with_snapshots=with_snapshots,
        )


def http_error(error: Exception) -> web.HTTPError:
    """The HTTP answer to a failed home or snapshot operation (anything else is re-raised).

    The user's request: 400 (bad input), 404 (no such snapshot or home), 409
    (the home is busy or in use, the snapshot unfinished). The hub's: 500 (a
    copy that failed, a helper image missing, a volume of another user or
    hub under the home's name), 503 (no Docker engine); the message says which.
    """
    if isinstance(error, web.HTTPError):
        return error
    if isinstance(error, (snapshots.SnapshotNotFound, snapshots.NoHome)):
        return web.HTTPError(404, "%s", str(error))
    if isinstance(error, ValueError):
        return web.HTTPError(400, "%s", str(error))
    if isinstance(error, homes.HomeBusy) or (
        isinstance(error, homes.HelperFailed) and "the snapshot is incomplete" in str(error)
    ):
        return web.HTTPError(409, "%s", str(error))
    if isinstance(error, homes.HomeError):
        return web.HTTPError(500, "%s", f"not done, the home is unchanged: {error}")
    if isinstance(error, (docker.errors.DockerException, requests.RequestException)):
        return web.HTTPError(
            503,
            "%s",
            f"the Docker engine did not answer as expected ({type(error).__name__}): "
            "is it running, and may the meter use its socket?",
        )
    raise error


class HomeHandlerMixin:
    """What the API and the forms share: the service, whose home, and who may change it."""

    def homes_service(self) -> HomeService:
        service = self.context.homes
        if service is None or not service.enabled:
            raise web.HTTPError(
                404,
                "homes and snapshots are off on this hub (c.HomeVolumes.enabled = False, "
                "or the meter has no Docker engine)",
            )
        return service

    async def check_change(self, user: str) -> None:
        """403 unless the token may stop `user`'s servers (their own, or an admin's)."""
        viewer = self.viewer
        if viewer.may_stop_servers and await may_stop(self.context, viewer, user, ""):
            return
        raise web.HTTPError(
            403,
            "%s",
            f"{viewer.name} may not take, restore or delete {user}'s snapshots: that needs "
            f"the scope {STOP_SCOPE} for {user}'s servers in the token (users have it for "
            "their own, hub admins for everyone)",
        )

    async def check_remove_home(self, user: str) -> None:
        viewer = self.viewer
        if viewer.admin and await may_stop(self.context, viewer, user, ""):
            return
        raise web.HTTPError(
            403,
            "%s",
            f"removing a home is for hub admins whose token holds {STOP_SCOPE} for {user}'s "
            f"servers; {viewer.name}'s does not",
        )


class HomeAPIHandler(HomeHandlerMixin, APIHandler):
    def body_json(self, example: str) -> dict:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "%s", f"send a JSON object, e.g. {example}")
        return data

    async def run(self, operation):
        try:
            return await operation
        except Exception as e:
            raise http_error(e) from None


class SnapshotsHandler(HomeAPIHandler):
    """``GET api/snapshots``: a user's snapshots; ``POST``: take one."""

    async def get(self):
        service = self.homes_service()
        user = self.subject()
        found = await self.run(service.list(user))
        found = await with_measured_sizes(self.context.reader, user, found)
        self.write_json(
            {
                "user": user,
                "home": service.home_of(user),
                "snapshots": [snapshot.to_json() for snapshot in found],
            }
        )

    async def post(self):
        service = self.homes_service()
        user = self.query("user") or self.viewer.name
        await self.check_change(user)
        data = self.body_json('{"label": "before the big run"}')
        if set(data) - {"label"}:
            raise web.HTTPError(400, "give only 'label' (optional); got %s", sorted(data))
        snapshot = await self.run(service.take(user, data.get("label", "")))
        log.info("%s took snapshot %s of %s's home", self.viewer.name, snapshot.id, user)
        self.write_json({"snapshot": snapshot.to_json()}, status=201)


class SnapshotHandler(HomeAPIHandler):
    """``DELETE api/snapshots/<id>``: delete one of a user's snapshots."""

    async def delete(self, snapshot_id):
        service = self.homes_service()
        user = self.query("user") or self.viewer.name
        await self.check_change(user)
        snapshot = await self.run(service.delete(user, snapshot_id))
        log.info("%s deleted snapshot %s of %s", self.viewer.name, snapshot.id, user)
        self.write_json({"deleted": snapshot.to_json()})


class RestoreHandler(HomeAPIHandler):
    """``POST api/snapshots/<id>/restore`` with ``{"confirm": true}``: replace the home."""

    async def post(self, snapshot_id):
        service = self.homes_service()
        user = self.query("user") or self.viewer.name
        await self.check_change(user)
        data = self.body_json('{"confirm": true}')
        if set(data) - {"confirm"} or data.get("confirm") is not True:
            raise web.HTTPError(
                400,
                "%s",
                f"a restore replaces everything in {user}'s home with the snapshot: "
                'send {"confirm": true}',
            )
        snapshot = await self.run(service.restore(user, snapshot_id))
        log.info("%s restored snapshot %s into %s's home", self.viewer.name, snapshot.id, user)
        self.write_json({"restored": snapshot.to_json()})


class HomesHandler(HomeAPIHandler):
    """``GET api/homes``: every user's home (hub admins and read-all holders)."""

    async def get(self):
        service = self.homes_service()
        self.viewer.check_sees_everyone("api/homes")
        found = await self.run(service.homes())
        self.write_json({"homes": [home.to_json() for home in found]})


class HomeHandler(HomeAPIHandler):
    """``DELETE api/homes/<user>[?snapshots=true]``: remove a user's home (hub admins)."""

    async def delete(self, user):
        service = self.homes_service()
        await self.check_remove_home(user)
        flag = self.query("snapshots") or "false"
        if flag not in ("true", "false"):
            raise web.HTTPError(400, "snapshots=%r: give true (remove them too) or false", flag)
        removed = await self.run(service.remove_home(user, flag == "true"))
        log.warning("%s removed the home of %s: %s", self.viewer.name, user, removed)
        self.write_json({"removed": removed})


async def with_measured_sizes(reader, user: str, found: list) -> list:
    """`found` snapshots, each without a size given the size the storage pass last measured."""
    if reader is None or all(snapshot.size_bytes is not None for snapshot in found):
        return found
    try:
        _, periods = await reader.call(reader.ledger.storage_now, user=user)
    except Exception as e:  # the list still shows, without sizes
        log.warning("Reading the measured sizes of %s's snapshots failed: %s", user, e)
        return found
    sizes = {period.volume: period.size_bytes for period in periods}
    return [
        snapshot
        if snapshot.size_bytes is not None
        else dataclasses.replace(snapshot, size_bytes=sizes.get(snapshot.volume))
        for snapshot in found
    ]


# --- the pages' forms --------------------------------------------------------------------


async def home_section(context, viewer, subject: str) -> dict | None:
    """What the user page's "Home and snapshots" section shows; None: no section."""
    service = context.homes
    if service is None or not service.enabled:
        return None
    try:
        found = await with_measured_sizes(context.reader, subject, await service.list(subject))
        problem = ""
    except Exception as e:  # the page still shows, with the problem instead of the list
        log.warning("Listing %s's snapshots failed: %s", subject, e)
        found, problem = [], "the snapshots cannot be listed now (the Docker engine did not answer)"
    may_change = viewer.may_stop_servers and await may_stop(context, viewer, subject, "")
    return {"snapshots": found, "may_change": may_change, "problem": problem}


async def homes_section(context, viewer) -> dict | None:
    """The admin page's homes table; None: no section."""
    service = context.homes
    if service is None or not service.enabled:
        return None
    try:
        return {"homes": await service.homes(), "problem": "", "may_remove": viewer.admin}
    except Exception as e:
        log.warning("Listing homes failed: %s", e)
        return {"homes": [], "problem": "homes cannot be listed now", "may_remove": False}


class SnapshotFormHandler(HomeHandlerMixin, PageHandler):
    """``POST snapshots``: the user page's form (``action`` take, restore or delete).

    Fields: ``action``, ``user`` (whose; default the caller), ``label`` (take),
    ``id`` (restore, delete), ``confirm=yes`` (restore, delete). Goes back to
    the usage page with a message.
    """

    async def post(self):
        field = self.get_body_argument
        user = field("user", "").strip() or self.viewer.name
        action = field("action", "")
        service = self.homes_service()
        await self.check_change(user)
        try:
            if action == "take":
                snapshot = await service.take(user, field("label", ""))
                message = f"snapshot {snapshot.id} taken"
            elif action in ("restore", "delete"):
                if field("confirm", "") != "yes":
                    raise ValueError(f"confirm the {action} first")
                snapshot_id = field("id", "")
                if action == "restore":
                    await service.restore(user, snapshot_id)
                    message = f"snapshot {snapshot_id} restored into the home"
                else:
                    await service.delete(user, snapshot_id)
                    message = f"snapshot {snapshot_id} deleted"
            else:
                raise ValueError("say what to do: action take, restore or delete")
        except Exception as e:
            error = http_error(e)
            if error.status_code >= 500:
                raise error from None
            message = f"not done: {error.log_message % error.args}"
        log.info("%s: %s's snapshots: %s", self.viewer.name, user, message)
        args = {"user": user if user != self.viewer.name else None, "snapshots": message}
        page = "?" + urlencode({k: v for k, v in args.items() if v is not None})
        self.redirect(self.context.prefix + page + "#home-snapshots", status=303)


class RemoveHomeFormHandler(HomeHandlerMixin, PageHandler):
    """``POST admin/homes``: the admin page's Remove button (``user``, ``confirm=yes``,
    ``snapshots=yes`` to remove them too)."""

    async def post(self):
        field = self.get_body_argument
        user = field("user", "").strip()
        service = self.homes_service()
        await self.check_remove_home(user)
        try:
            if not user or field("confirm", "") != "yes":
                raise ValueError("say whose home, and confirm the removal")
            removed = await service.remove_home(user, field("snapshots", "") == "yes")
            message = f"removed the home of {user}" + (
                f" and {len(removed['snapshots'])} snapshot(s)" if removed["snapshots"] else ""
            )
            log.warning("%s removed the home of %s: %s", self.viewer.name, user, removed)
        except Exception as e:
            error = http_error(e)
            if error.status_code >= 500:
                raise error from None
            message = f"not done: {error.log_message % error.args}"
        self.redirect(
            self.context.prefix + "admin?" + urlencode({"homes": message}) + "#homes",
            status=303,
        )


def home_routes(prefix: str, args: dict) -> list:
    base = prefix + "api/"
    return [
        (base + "snapshots", SnapshotsHandler, args),
        (base + r"snapshots/([^/]+)/restore", RestoreHandler, args),
        (base + r"snapshots/([^/]+)", SnapshotHandler, args),
        (base + "homes", HomesHandler, args),
        (base + r"homes/([^/]+)", HomeHandler, args),
        (prefix + "snapshots", SnapshotFormHandler, args),
        (prefix + "admin/homes", RemoveHomeFormHandler, args),
    ]
