"""SSH keys over HTTP: ``api/ssh-keys`` (see ``openapi.yaml``) and the usage page's section.

Who may do what:

- listing keys: the caller's own; anyone's for hub admins and holders of
  ``custom:gpu-meter:read-all`` (``?user=``);
- adding a key: the caller's own only. Nobody adds a key to another user's
  servers, hub admins neither (a key is a way in; only its owner hands it out);
- removing a key: the caller's own; another user's (``?user=``) only for hub
  admins whose token may stop that user's servers (incident response: a
  leaked key), as removing a home is.

Every change writes the user's whole key list into their running SSH-enabled
containers before the answer (``servers_updated``, :mod:`.ssh_push`); a
container that is gone or refuses is logged and left out.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from urllib.parse import quote, urlencode

from tornado import web
from traitlets import Unicode, validate
from traitlets.config import Configurable

from .. import labels, usage
from .._version import __version__
from ..ledger import DuplicateKey, TooManyKeys
from ..ssh import MAX_KEYS_PER_USER, parse_public_key
from .api import APIHandler
from .hubapi import STOP_SCOPE
from .pages import PageHandler, may_stop

log = logging.getLogger(__name__)

# --- engineer C's client (issue 14) --------------------------------------------------
# STAND-IN until jupyter_gpu_meter.ssh_proxy / ssh_wheel land (the lead removes the
# fallbacks at the merge): the same signatures and the spec's output.
try:
    from ..ssh_proxy import config_snippet
except ImportError:

    def config_snippet(server_url: str, user: str, server: str = "", login: str = "jovyan"):
        alias = f"gpu-{user}" + (f"-{server}" if server else "")
        return (
            f"Host {alias}\n    HostName {alias}\n    User {login}\n"
            f"    ProxyCommand jupyter-gpu-meter-ssh {server_url}\n"
            "    StrictHostKeyChecking accept-new\n    ServerAliveInterval 30\n"
        )


try:
    from ..ssh_wheel import client_wheel

    def wheel_filename() -> str:
        return client_wheel()[0]

except ImportError:

    def wheel_filename() -> str:
        return f"jupyter_gpu_meter_ssh-{__version__.replace('-', '_')}-py3-none-any.whl"


# --------------------------------------------------------------------------------------


class SSHKeys(Configurable):
    """Settings of the usage page's SSH section (``c.SSHKeys.…``)."""

    public_url = Unicode(
        "",
        help="""
        The hub's address as users' laptops reach it, for the ``~/.ssh/config``
        snippet and the ``pip install`` line on the usage page, e.g.
        ``https://hub.example.org`` (a path after it is the hub's base URL's
        place: leave it out, the page adds ``c.JupyterHub.base_url``). Empty: the
        scheme and host the browser used (the ``Host`` header, which the hub's
        proxy passes on, and the proxy's ``X-Forwarded-Proto``).
        """,
    ).tag(config=True)

    @validate("public_url")
    def _check_public_url(self, proposal):
        value = proposal["value"].rstrip("/")
        if value and not value.startswith(("https://", "http://")):
            raise ValueError(
                f"c.SSHKeys.public_url {value!r}: give the hub's address with its scheme, "
                "e.g. 'https://hub.example.org', or '' for the one the browser used"
            )
        return value


def key_json(record) -> dict:
    return {
        "id": record.id,
        "fingerprint": record.fingerprint,
        "type": record.key_type,
        "comment": record.comment,
        "public_key": record.public_key,
        "added_at": usage.isoformat(record.added_at),
    }


class KeyChanges:
    """What the API and the page's form share: the checks, the ledger, the push."""

    async def add_key(self, user: str, text) -> tuple[dict, list[str]]:
        if user != self.viewer.name:
            raise web.HTTPError(
                403,
                "%s",
                f"{self.viewer.name} may not add a key for {user}: everyone adds their own "
                "keys (hub admins too), so that only a key's owner hands out a way in",
            )
        try:
            key = parse_public_key(text)
        except ValueError as e:
            raise web.HTTPError(400, "%s", str(e)) from None
        reader = self.context.reader
        try:
            record = await reader.call(reader.ledger.add_ssh_key, user, key, reader.clock())
        except (DuplicateKey, TooManyKeys) as e:
            raise web.HTTPError(409, "%s", str(e)) from None
        log.info("%s added SSH key %s (%s)", user, record.fingerprint, record.key_type)
        return key_json(record), await self.push(user)

    async def remove_key(self, user: str, key_id: int) -> tuple[dict, list[str]]:
        if user != self.viewer.name:
            viewer = self.viewer
            if not (viewer.admin and await may_stop(self.context, viewer, user, "")):
                raise web.HTTPError(
                    403,
                    "%s",
                    f"removing {user}'s SSH keys is for hub admins whose token holds "
                    f"{STOP_SCOPE} for {user}'s servers; {viewer.name} may remove only their own",
                )
        reader = self.context.reader
        record = await reader.call(reader.ledger.remove_ssh_key, user, key_id)
        if not record:
            raise web.HTTPError(404, "%s", f"{user} has no SSH key with id {key_id}")
        log.warning("%s removed SSH key %s of %s", self.viewer.name, record.fingerprint, user)
        return key_json(record), await self.push(user)

    async def push(self, user: str) -> list[str]:
        pusher = self.context.ssh
        return [] if pusher is None else await pusher.after_change(user)


class SSHKeysHandler(KeyChanges, APIHandler):
    """``GET api/ssh-keys``: a user's keys; ``POST``: add one of the caller's own."""

    async def get(self):
        user = self.subject()
        reader = self.context.reader
        keys = await reader.call(reader.ledger.ssh_keys, user)
        self.write_json({"user": user, "keys": [key_json(record) for record in keys]})

    async def post(self):
        user = self.query("user") or self.viewer.name
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            data = None
        if not isinstance(data, dict) or set(data) != {"key"}:
            raise web.HTTPError(
                400,
                "%s",
                'send a JSON object with only "key", one line of ~/.ssh/id_ed25519.pub: '
                '{"key": "ssh-ed25519 AAAA… you@laptop"}',
            )
        key, updated = await self.add_key(user, data["key"])
        self.write_json({"key": key, "servers_updated": updated}, status=201)


class SSHKeyHandler(KeyChanges, APIHandler):
    """``DELETE api/ssh-keys/<id>``: remove one of the caller's (admins: ``?user=``)."""

    async def delete(self, key_id):
        user = self.query("user") or self.viewer.name
        removed, updated = await self.remove_key(user, int(key_id))
        self.write_json({"removed": removed, "servers_updated": updated})


# --- the usage page ------------------------------------------------------------------


def public_url(handler) -> str:
    """The hub's address for laptops: ``c.SSHKeys.public_url``, else the request's."""
    configured = handler.context.ssh_settings.public_url
    if configured:
        return configured
    return f"{handler.request.protocol}://{handler.request.host}"


def server_url(base: str, user: str, server: str = "") -> str:
    """A server's URL as the client takes it: ``https://hub/user/ada/`` or ``…/ada/gpu1/``."""
    path = f"user/{quote(user, safe='@~')}/"
    if server:
        path += f"{quote(server, safe='@~')}/"
    return base + path


async def ssh_section(handler, subject: str) -> SimpleNamespace:
    """What the usage page's "SSH" section shows (the ``ssh`` of ``ssh_keys.html``)."""
    context, viewer = handler.context, handler.viewer
    own = subject == viewer.name
    reader = context.reader
    try:
        keys, problem = await reader.call(reader.ledger.ssh_keys, subject), ""
    except Exception as e:  # the page still shows, with the problem instead of the list
        log.warning("Reading %s's SSH keys failed: %s", subject, e)
        keys, problem = [], "the SSH keys cannot be read now (the ledger did not answer)"
    servers = [""]
    if own and context.ssh is not None:
        try:
            running = await context.ssh.call(context.ssh.containers_of, subject)
            found = {(c.get("Labels") or {}).get(labels.SERVER, "") for c in running}
            servers = sorted(found) or [""]
        except Exception as e:
            log.warning("Listing %s's SSH servers failed: %s", subject, e)
    hub = public_url(handler) + context.base_url
    return SimpleNamespace(
        keys=keys,
        problem=problem,
        own=own,
        may_remove=own or (viewer.admin and await may_stop(context, viewer, subject, "")),
        max_keys=MAX_KEYS_PER_USER,
        pip=f"pip install {public_url(handler)}{context.prefix}ssh/{wheel_filename()}",
        snippets=[
            {"server": s, "text": config_snippet(server_url(hub, subject, s), subject, s)}
            for s in (servers if own else [])
        ],
        message=handler.query("ssh"),
    )


class SSHKeyFormHandler(KeyChanges, PageHandler):
    """``POST ssh-keys``: the usage page's forms (``action`` add with ``key``, or remove
    with ``id``; ``user`` whose, default the caller). Back to the page with a message."""

    async def post(self):
        field = self.get_body_argument
        user = field("user", "").strip() or self.viewer.name
        action = field("action", "")
        try:
            if action == "add":
                key, updated = await self.add_key(user, field("key", ""))
                message = f"key {key['fingerprint']} added"
            elif action == "remove":
                key_id = field("id", "")
                if not key_id.isdigit():
                    raise web.HTTPError(400, "say which key to remove: field 'id'")
                key, updated = await self.remove_key(user, int(key_id))
                message = f"key {key['fingerprint']} removed"
            else:
                raise web.HTTPError(400, "say what to do: action add (with key) or remove (id)")
            if updated:
                message += "; written to " + ", ".join(s or "the default server" for s in updated)
        except web.HTTPError as e:
            if e.status_code == 403:
                raise
            message = f"not done: {e.log_message % e.args if e.args else e.log_message}"
        args = {"user": user if user != self.viewer.name else None, "ssh": message}
        page = "?" + urlencode({k: v for k, v in args.items() if v is not None})
        self.redirect(self.context.prefix + page + "#ssh", status=303)


def ssh_routes(prefix: str, args: dict) -> list:
    return [
        (prefix + "api/ssh-keys", SSHKeysHandler, args),
        (prefix + r"api/ssh-keys/([0-9]+)", SSHKeyHandler, args),
        (prefix + "ssh-keys", SSHKeyFormHandler, args),
    ]
