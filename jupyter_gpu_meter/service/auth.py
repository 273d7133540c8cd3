"""Who is asking, and what they may see: the hub's OAuth and tokens, and the access rules.

Every page and API handler authenticates through the hub
(:class:`jupyterhub.services.auth.HubOAuth`): a browser by the cookie the
``oauth_callback`` sets after the hub's OAuth login, a script by a hub token
(``Authorization: token …``). Then:

- anyone allowed to use the service (the scope
  ``access:services!service=gpu-meter``) sees their own usage;
- hub admins, and holders of :data:`READ_ALL_SCOPE`, see everyone's;
- stopping a server needs :data:`STOP_SCOPE` (``delete:servers``) for that
  server, as the hub itself would check it (:meth:`Viewer.may_stop`);
- changing budgets needs :data:`BUDGETS_SCOPE`.

Actions are checked against the scopes of the caller's *token* (what the hub
puts in the user model's ``scopes``: the token's scopes, expanded, intersected
with its owner's), never against the admin flag: an admin's token scoped down
to reading cannot stop or change anything. A browser's token is the one the
hub's OAuth issued to this service, limited to the service's
``oauth_client_allowed_scopes`` (``setup_meter`` asks for both scopes there).

Cookie-authenticated requests other than page loads (the pages' own fetches,
the stop form) must carry the page's XSRF token; token-authenticated ones
need none (a cross-site page cannot set the header).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from jupyterhub.scopes import Scope, has_scope, parse_scopes
from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from tornado import web

from ..scopes import BUDGETS_SCOPE, READ_ALL_SCOPE, STOP_SCOPE, access_scope


@dataclass(frozen=True)
class Viewer:
    """The user (or service) behind a request, from the hub's model of them."""

    name: str
    kind: str = "user"
    admin: bool = False
    scopes: frozenset[str] = frozenset()

    @classmethod
    def from_model(cls, model: dict) -> Viewer:
        return cls(
            name=model["name"],
            kind=model.get("kind", "user"),
            admin=model.get("admin") is True,
            scopes=frozenset(model.get("scopes") or ()),
        )

    @property
    def sees_everyone(self) -> bool:
        """Hub admins and holders of :data:`READ_ALL_SCOPE`."""
        return self.admin or READ_ALL_SCOPE in self.scopes

    @property
    def may_stop_servers(self) -> bool:
        """Whether the token holds :data:`STOP_SCOPE` for any server at all."""
        return STOP_SCOPE in parse_scopes(self.scopes)

    @property
    def stop_groups(self) -> frozenset[str]:
        """The groups of ``delete:servers!group=...``: whose members' servers we may stop."""
        filters = parse_scopes(self.scopes).get(STOP_SCOPE)
        if filters is None or filters is Scope.ALL:
            return frozenset()
        return frozenset(filters.get("group", ()))

    def may_stop(self, user: str, server: str = "", groups=()) -> bool:
        """Whether the token may stop `user`'s `server` ("" for the default one).

        The hub's own check (:func:`jupyterhub.scopes.has_scope`, as its
        ``DELETE /users/:name/servers/:server`` does): ``delete:servers``, or
        filtered ``!user=<user>`` or ``!server=<user>/<server>``. The hub
        resolves ``!group=`` filters against its database; a service has none,
        so `groups` are `user`'s groups as the hub gave them (see
        :attr:`stop_groups`: only needed when the token holds such a filter).
        Seeing everyone's usage, or being a hub admin, is not enough.
        """
        if has_scope(f"{STOP_SCOPE}!server={user}/{server}", self.scopes):
            return True
        return bool(self.stop_groups & set(groups))

    def stop_refused(self, user: str, server: str = "") -> web.HTTPError:
        """The 403 for a caller who may not stop `user`'s `server`."""
        scope = STOP_SCOPE
        return web.HTTPError(
            403,
            "%s",
            f"{self.name} may not stop {user}/{server}: that needs the scope {scope} for it "
            f"in the token ({scope}, {scope}!user={user}, {scope}!server={user}/{server} "
            f"or {scope}!group=<a group of {user}'s>)",
        )

    @property
    def may_change_budgets(self) -> bool:
        """Holders of :data:`BUDGETS_SCOPE` (hub admins get it through ``setup_meter``)."""
        return has_scope(BUDGETS_SCOPE, self.scopes)

    def check_change_budgets(self) -> None:
        if not self.may_change_budgets:
            raise web.HTTPError(
                403,
                "changing budgets needs the scope %s in the token; %s's has not got it",
                BUDGETS_SCOPE,
                self.name,
            )

    def may_read(self, user: str) -> bool:
        return user == self.name or self.sees_everyone

    def check_read(self, user: str) -> None:
        if not self.may_read(user):
            raise web.HTTPError(
                403,
                "%s may see only their own usage; seeing %s's needs hub admin or the scope %s",
                self.name,
                user,
                READ_ALL_SCOPE,
            )

    def check_sees_everyone(self, what: str) -> None:
        if not self.sees_everyone:
            raise web.HTTPError(
                403, "%s is for hub admins and holders of the scope %s", what, READ_ALL_SCOPE
            )


def json_for_script(name: str) -> str:
    """`name` as the inside of a JSON string that is safe inside ``<script>``."""
    return (
        json.dumps(name)[1:-1]
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )


@dataclass(frozen=True)
class PageUser:
    """What the hub's ``page.html`` reads of ``user``."""

    name: str

    @property
    def json_escaped_name(self) -> str:
        return json_for_script(self.name)


class Authenticated(HubOAuthenticated):
    """Mixin: authenticates every request in ``prepare()``, without blocking the loop.

    ``self.viewer`` is the :class:`Viewer`; a request the hub does not
    authenticate goes to :meth:`not_authenticated`, one it authenticates but
    this service does not allow (missing ``hub_scopes``) gets a 403.
    """

    viewer: Viewer | None = None

    @property
    def hub_scopes(self) -> set[str]:
        """The scope every request needs: ``access:services!service=<our name>``.

        Set here, not left to HubAuth's default: that comes from the
        environment the hub gives a managed service, and without it
        (``JUPYTERHUB_SERVICE_NAME`` unset) HubAuthenticated allows any token
        the hub knows. The name is the hub's for us, ``gpu-meter`` by default.
        """
        return {access_scope(self.context.service_name)}

    def initialize(self, context):
        self.context = context
        self.hub_auth = context.hub_auth

    async def prepare(self):
        model = await self.hub_auth.get_user(self, sync=False)
        allowed = None
        if model:
            try:
                allowed = self.check_hub_user(model)
            except UserNotAllowed:
                allowed = None
        # HubAuthenticated.get_current_user returns this from now on
        self._hub_auth_user_cache = allowed
        if allowed:
            self.viewer = Viewer.from_model(allowed)
            return
        if model:
            raise web.HTTPError(
                403,
                "%s %s may not use this: it needs the scope %s",
                model.get("kind", "user"),
                model.get("name"),
                " or ".join(sorted(self.hub_scopes or ())),
            )
        self.not_authenticated()

    def not_authenticated(self):
        raise web.HTTPError(
            403,
            "not authenticated: send a JupyterHub token (header 'Authorization: token <token>'), "
            "or log in to the hub",
        )
