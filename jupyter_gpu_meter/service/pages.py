"""The usage pages: the user's own page, the admin page and its stop button.

Rendered with Jinja (autoescape on) through the hub's own ``page.html``, so the
pages carry the hub's navigation bar, CSS and dark mode. Templates are looked
up in this package's ``templates/``, then the hub's ``template_paths`` (from
the hub's config file), then the hub's default templates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import jinja2
from tornado import web
from tornado.httpclient import HTTPClientError

from .. import budgets, usage
from .._version import __version__
from .auth import READ_ALL_SCOPE, Authenticated, PageUser, Viewer
from .charts import bar_chart_svg, sparkline_svg
from .gpus import format_gib, gpus_and_nodes, isolation_section
from .query import UsageArgumentError, parse_choice, parse_count, parse_range

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
#: the package's hub templates: page.html adds "GPU usage" to the hub's navigation bar
HUB_TEMPLATES = HERE.parent / "hub_templates"


def hub_default_templates() -> str:
    """The hub's own templates (share/jupyterhub/templates of the installed JupyterHub)."""
    from jupyterhub._data import DATA_FILES_PATH

    return os.path.join(DATA_FILES_PATH, "templates")


def make_templates(hub_template_paths=(), template_vars: dict | None = None) -> jinja2.Environment:
    """The Jinja environment of the pages: ours, the hub's configured, the hub's defaults."""
    default = hub_default_templates()
    loader = jinja2.ChoiceLoader(
        [
            jinja2.FileSystemLoader(str(TEMPLATES)),
            jinja2.FileSystemLoader([str(p) for p in hub_template_paths if p]),
            jinja2.FileSystemLoader(str(HUB_TEMPLATES)),
            jinja2.PrefixLoader({"templates": jinja2.FileSystemLoader(default)}, "/"),
            jinja2.FileSystemLoader(default),
        ]
    )
    env = jinja2.Environment(loader=loader, autoescape=True)
    env.filters.update(
        money=usage.format_money,
        charges=usage.format_charges,
        hours=usage.format_quantity,
        duration=usage.format_duration,
        day=usage.format_day,
        month_start=usage.month_start,
        amount=usage.format_amount,
        rate=usage.format_rate,
        utc=usage.format_time,
        percent=usage.format_percent,
        share=usage.format_share,
        energy=usage.format_energy,
        gib=format_gib,
        idle_hours=format_known_hours,
        gb=format_gb,
    )
    env.globals["template_vars"] = {
        key: value for key, value in (template_vars or {}).items() if not callable(value)
    }
    return env


# --- words (for people; the API gives exact decimals): the usage core's, and sizes ------


def format_known_hours(value: Decimal | None) -> str:
    """GPU-hours that may be unknown (idle, busy: no GPU sample): ``1.25``, or "–"."""
    return "–" if value is None else usage.format_quantity(value)


def format_gb(value: int | None) -> str:
    """Storage as it is priced: ``12.35 GB`` (10**9 bytes); "–" when unknown."""
    return "–" if value is None else f"{usage.format_quantity(Decimal(value).scaleb(-9))} GB"


# --- handlers ------------------------------------------------------------------------


class PageHandler(Authenticated, web.RequestHandler):
    """A page: a browser that is not logged in is sent through the hub's OAuth login."""

    def not_authenticated(self):
        if self.request.method in ("GET", "HEAD"):
            self.redirect(self.get_login_url())
            return
        super().not_authenticated()

    def namespace(self, **extra) -> dict:
        """What the hub's page.html expects, and ours."""
        context = self.context
        viewer = self.viewer

        def hub_static(path, include_version=True):
            return context.hub_prefix + "static/" + path

        def meter_static(path):
            return f"{context.prefix}static/{path}?v={__version__}"

        return {
            # the hub's page.html
            "base_url": context.hub_prefix,
            "prefix": context.base_url,
            "user": PageUser(viewer.name) if viewer else None,
            "login_url": context.hub_prefix + "login",
            "logout_url": context.hub_prefix + "logout",
            "static_url": hub_static,
            "version_hash": "",
            "services": [{"name": context.service_name, "href": context.prefix}],
            "parsed_scopes": {"admin-ui": True} if viewer and viewer.admin else {},
            "admin_access": bool(viewer and viewer.admin),
            "no_spawner_check": True,
            "announcement": "",
            "logo_url": "",
            "xsrf_token": self.xsrf_token.decode("ascii") if viewer else "",
            # ours
            "meter_prefix": context.prefix,
            "meter_static": meter_static,
            "viewer": viewer,
            "read_all_scope": READ_ALL_SCOPE,
            **extra,
        }

    def set_default_headers(self):
        # no page of the service may be framed, not even by the hub's origin: a user's
        # server on that origin could frame the admin page and script it (clickjacking)
        self.set_header("Content-Security-Policy", "frame-ancestors 'none'")
        self.set_header("X-Frame-Options", "DENY")

    def render_page(self, name: str, **extra):
        template = self.context.templates.get_template(name)
        self.finish(template.render(self.namespace(**extra)))

    def write_error(self, status_code, **kwargs):
        message = self._reason
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], web.HTTPError) and exc_info[1].log_message:
            error = exc_info[1]
            message = error.log_message % error.args if error.args else error.log_message
        if "text/html" not in self.request.headers.get("Accept", ""):
            # a script, not a browser (browsers ask for text/html): the API's JSON errors
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(json.dumps({"status": status_code, "message": message}))
            return
        try:
            self.render_page("error.html", status_code=status_code, message=message)
        except Exception:  # never fail the error page itself
            log.exception("Rendering the error page failed")
            self.finish(f"{status_code}: {message}")

    def query(self, name: str) -> str | None:
        return self.get_query_argument(name, None)

    def bad_request(self, error: UsageArgumentError):
        raise web.HTTPError(400, "%s", str(error))


class UserPageHandler(PageHandler):
    """``GET /services/gpu-meter/``: your GPU usage (admins: ``?user=`` anyone's)."""

    async def get(self):
        viewer = self.viewer
        subject = self.query("user") or viewer.name
        viewer.check_read(subject)
        try:
            since, until = parse_range(self.query("since"), self.query("until"))
            offset = parse_count(self.query("offset"), "offset", default=0)
        except UsageArgumentError as e:
            self.bad_request(e)
        reader = self.context.reader
        view = await reader.call(reader.user_view, subject, since=since, until=until, offset=offset)
        live = {
            "url": self.context.prefix + "api/usage?" + urlencode({"user": subject, "limit": 0}),
            "refresh_s": self.context.settings.refresh_interval,
        }

        def page_url(new_offset):
            args = {"user": subject if subject != viewer.name else None, "offset": new_offset}
            args.update(since=self.query("since"), until=self.query("until"))
            return "?" + urlencode({k: v for k, v in args.items() if v not in (None, "")})

        history = view.history
        from .home_api import home_section  # (these build on this module's handlers)
        from .ssh_api import ssh_section

        home = await home_section(self.context, viewer, subject)
        stoppable = await stoppable_servers(
            self.context, viewer, {subject: [item.session for item in view.running]}
        )
        self.render_page(
            "usage.html",
            view=view,
            subject=subject,
            own=subject == viewer.name,
            may_stop=lambda server: (subject, server) in stoppable,
            stopped=self.query("stopped"),
            chart=bar_chart_svg(view.daily),
            sparkline=lambda item: sparkline_svg(item.utilization),
            live=live,
            home=home,
            ssh=await ssh_section(self, subject),
            snapshots_message=self.query("snapshots"),
            since_text=self.query("since") or "",
            until_text=self.query("until") or "",
            previous_url=page_url(max(history.offset - history.limit, 0))
            if history.offset
            else None,
            next_url=page_url(history.next_offset) if history.next_offset is not None else None,
        )


class AdminPageHandler(PageHandler):
    """``GET admin``: every user, every GPU, totals, CSV, stop buttons."""

    async def get(self):
        viewer = self.viewer
        viewer.check_sees_everyone("the admin page")
        arguments = self.request.query_arguments
        now = self.context.reader.clock()
        if "since" not in arguments and "until" not in arguments:
            since_text, until_text = usage.month_start(now).date().isoformat(), ""
        else:
            since_text, until_text = self.query("since") or "", self.query("until") or ""
        try:
            since, until = parse_range(since_text, until_text)
            sort = parse_choice(self.query("sort"), "sort", usage.USER_SORT_KEYS, "gpu_hours")
            order = parse_choice(self.query("order"), "order", ("asc", "desc"), "desc")
            offset = parse_count(self.query("offset"), "offset", default=0)
        except UsageArgumentError as e:
            self.bad_request(e)
        reader = self.context.reader
        users = reader.call(  # the users and the GPUs read at once, in the reader's threads
            reader.users_view, since=since, until=until, sort=sort, order=order, offset=offset
        )
        view, (gpus, nodes) = await asyncio.gather(users, gpus_and_nodes(self.context, viewer))
        budgets = await reader.call(reader.ledger.budgets)
        stoppable = await stoppable_servers(self.context, viewer, view.running)
        from .home_api import homes_section  # (it builds on this module's handlers)

        homes = await homes_section(self.context, viewer)
        isolation = await isolation_section(self.context)
        range_args = {"since": since_text, "until": until_text}

        def url(**changes):
            args = {**range_args, "sort": sort, "order": order, **changes}
            return "?" + urlencode({k: v for k, v in args.items() if v is not None})

        def sort_url(key):
            if key == sort:  # the current column: the other way round
                new_order = "asc" if order == "desc" else "desc"
            else:
                new_order = "asc" if key == "user" else "desc"
            return url(sort=key, order=new_order, offset=None)

        page = view.users
        self.render_page(
            "admin.html",
            view=view,
            gpus=gpus,
            nodes=nodes,
            since_text=since_text,
            until_text=until_text,
            sort=sort,
            order=order,
            sort_url=sort_url,
            csv_url=self.context.prefix
            + "api/export.csv?"
            + urlencode({k: v for k, v in range_args.items() if v}),
            this_month=usage.month_start(now).date().isoformat(),
            previous_url=url(offset=max(page.offset - page.limit, 0)) if page.offset else None,
            next_url=url(offset=page.next_offset) if page.next_offset is not None else None,
            stopped=self.query("stopped"),
            budgets=budgets,
            budget_message=self.query("budget"),
            may_change_budgets=viewer.may_change_budgets,
            may_stop=lambda user, server: (user, server) in stoppable,
            homes=homes,
            homes_message=self.query("homes"),
            isolation=isolation,
            live={
                "url": self.context.prefix + "api/gpus",
                "refresh_s": self.context.settings.refresh_interval,
            },
        )


async def groups_of(context, user: str) -> list[str]:
    """`user`'s groups from the hub (the meter's scope ``read:users:groups``).

    A user the hub does not know has none; a hub that cannot answer is a 503
    that says what was asked.
    """
    try:
        return await context.hub_api.user_groups(user)
    except HTTPClientError as e:
        if e.code == 404:
            return []
        reason = f"{e.code} {e.message}"
    except OSError as e:
        reason = str(e) or type(e).__name__
    raise web.HTTPError(
        503,
        "%s",
        f"cannot check a group-filtered delete:servers scope: the hub did not say which "
        f"groups {user} is in ({reason}); try again, or use a token with delete:servers "
        f"for {user} without a group filter",
    )


async def may_stop(context, viewer: Viewer, user: str, server: str) -> bool:
    """:meth:`Viewer.may_stop`, asking the hub for `user`'s groups only when it matters."""
    if viewer.may_stop(user, server):
        return True
    if not viewer.stop_groups:
        return False
    return viewer.may_stop(user, server, await groups_of(context, user))


async def stoppable_servers(context, viewer: Viewer, running: dict) -> set[tuple[str, str]]:
    """The (user, server) pairs of `running` (user -> sessions) that `viewer` may stop.

    For the pages' stop buttons: a hub that cannot say a user's groups only
    hides that user's buttons (logged); the page still shows.
    """
    if not viewer.may_stop_servers:
        return set()
    allowed = set()
    for user, sessions in running.items():
        servers = {session.server for session in sessions}
        mine = {server for server in servers if viewer.may_stop(user, server)}
        if mine != servers and viewer.stop_groups:
            try:
                groups = await groups_of(context, user)
            except web.HTTPError as e:
                log.warning("No stop buttons for %s: %s", user, e.log_message % e.args)
                groups = []
            mine = {server for server in servers if viewer.may_stop(user, server, groups)}
        allowed |= {(user, server) for server in mine}
    return allowed


class StopServerHandler(PageHandler):
    """``POST admin/stop`` (form fields ``user``, ``server``, ``back``): stop a user's server.

    The caller's token needs ``delete:servers`` for that server
    (:meth:`Viewer.may_stop`): hub admins with a full token, and users for
    their own servers (the hub's default ``self`` scope includes
    ``delete:servers!user=<them>``). From a page it needs the page's XSRF
    token (a cookie-authenticated POST without it is not authenticated at
    all), and goes back to the admin page, or to the user's usage page with
    ``back=usage``; a script uses a token instead and gets JSON. The service
    stops the server through the hub's API with its own token (scope
    ``delete:servers``).
    """

    async def post(self):
        viewer = self.viewer
        user = self.get_body_argument("user", "").strip()
        server = self.get_body_argument("server", "").strip()
        if not viewer.may_stop_servers:  # a read-only token learns nothing more
            raise viewer.stop_refused(user, server)
        if not user:
            raise web.HTTPError(400, "say whose server to stop: form field 'user' (and 'server')")
        if not await may_stop(self.context, viewer, user, server):
            raise viewer.stop_refused(user, server)
        status = await self.context.hub_api.stop_server(user, server)
        # the hub: 202 stopping, 204 stopped (or it was not running)
        message = f"stopping {user}/{server}" if status == 202 else f"{user}/{server} is stopped"
        log.info(
            "%s %s asked the hub to stop %s/%s: %s", viewer.kind, viewer.name, user, server, status
        )
        if getattr(self, "_token_authenticated", False):
            self.set_status(202 if status == 202 else 200)
            self.finish({"status": self.get_status(), "hub_status": status, "message": message})
            return
        if self.get_body_argument("back", "admin") == "usage":
            args = {"user": user if user != viewer.name else None, "stopped": message}
            page = "?" + urlencode({k: v for k, v in args.items() if v is not None})
        else:
            page = "admin?" + urlencode({"stopped": message})
        self.redirect(self.context.prefix + page, status=303)


class BudgetFormHandler(PageHandler):
    """``POST admin/budget``: the admin page's budget form (set, grant or remove).

    Form fields: ``action`` (set, grant, remove), ``scope`` (user, group),
    ``name``, ``amount``, and for set ``unit``, ``period``, ``currency``, for
    grant ``note``. The token needs the scope ``custom:gpu-meter:budgets``
    (hub admins get it through ``setup_meter``); a browser needs the page's
    XSRF token. Recorded with who and when, like the CLI and the API.
    """

    async def post(self):
        viewer = self.viewer
        viewer.check_change_budgets()
        field = self.get_body_argument
        action, scope, name = field("action", ""), field("scope", "user"), field("name", "").strip()
        if action not in ("set", "grant", "remove") or not name:
            raise web.HTTPError(400, "say what to do (set, grant or remove) and for whom (name)")
        reader = self.context.reader
        common = {"scope": scope, "name": name, "by": viewer.name, "at": reader.clock()}
        try:
            if action == "set":
                unit = field("unit", "money")
                await reader.call(
                    reader.ledger.set_budget,
                    amount=field("amount", ""),
                    unit=unit,
                    period=field("period", "month") or "month",
                    currency=budgets.budget_currency(
                        unit,
                        field("currency", "") if unit == budgets.MONEY else None,
                        reader.currency,
                    ),
                    **common,
                )
            elif action == "grant":
                await reader.call(
                    reader.ledger.grant_budget,
                    amount=field("amount", ""),
                    note=field("note", ""),
                    **common,
                )
            elif not await reader.call(reader.ledger.remove_budget, **common):
                raise ValueError(f"{scope} {name} has no budget")
        except ValueError as e:
            message = f"not done: {e}"
        else:
            message = f"{action} for {scope} {name}: done"
        self.redirect(self.context.prefix + "admin?" + urlencode({"budget": message}), status=303)
