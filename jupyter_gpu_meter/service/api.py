"""The JSON API and the CSV export (see ``openapi.yaml`` next to this file).

Times are ISO 8601 UTC; money is ``{"amount": "<decimal>", "currency": "USD"}``;
lists are paged with ``limit``/``offset`` and say their ``total``. Errors are
``{"status": 400, "message": "..."}`` with a message that says what is allowed.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from urllib.parse import quote, urlencode

from tornado import web

from .. import usage
from .auth import Authenticated
from .cluster_views import totals as nodes_totals
from .gpus import gpu_list, gpus_and_nodes
from .handlers import JSONHandler
from .query import UsageArgumentError, parse_choice, parse_count, parse_range
from .reader import MAX_LIMIT

OPENAPI = Path(__file__).parent / "openapi.yaml"


class APIHandler(Authenticated, JSONHandler):
    """JSON in and out; authenticated by a hub token or the pages' cookie (plus XSRF)."""

    def query(self, name: str) -> str | None:
        return self.get_query_argument(name, None)

    def arguments(self, *, default_limit: int | None = None) -> dict:
        """since, until, limit, offset from the query; a 400 that says what is allowed."""
        try:
            since, until = parse_range(self.query("since"), self.query("until"))
            limit = parse_count(
                self.query("limit"), "limit", default=default_limit, maximum=MAX_LIMIT
            )
            offset = parse_count(self.query("offset"), "offset", default=0)
        except UsageArgumentError as e:
            raise web.HTTPError(400, "%s", str(e)) from None
        return {"since": since, "until": until, "limit": limit, "offset": offset}

    def subject(self) -> str:
        """Whose usage: ``?user=`` (admins and read-all holders), else the caller's own."""
        user = self.query("user") or self.viewer.name
        self.viewer.check_read(user)
        return user


class UsageAPIHandler(APIHandler):
    """``GET api/usage``: one user's totals, running sessions, history and days."""

    async def get(self):
        user = self.subject()
        reader = self.context.reader
        args = self.arguments(default_limit=reader.settings.history_page_size)
        view = await reader.call(reader.user_view, user, **args)
        self.write_json(view.to_json())


class UsersAPIHandler(APIHandler):
    """``GET api/users``: every user's totals (admins and read-all holders)."""

    async def get(self):
        self.viewer.check_sees_everyone("api/users")
        reader = self.context.reader
        args = self.arguments(default_limit=reader.settings.users_page_size)
        try:
            sort = parse_choice(self.query("sort"), "sort", usage.USER_SORT_KEYS, "gpu_hours")
            order = parse_choice(self.query("order"), "order", ("asc", "desc"), "desc")
        except UsageArgumentError as e:
            raise web.HTTPError(400, "%s", str(e)) from None
        view = await reader.call(reader.users_view, sort=sort, order=order, **args)
        self.write_json(view.to_json())


class GPUsAPIHandler(APIHandler):
    """``GET api/gpus``: every GPU now (others' readings only for those who see everyone)."""

    async def get(self):
        gpus = await gpu_list(self.context, self.viewer)
        self.write_json({"gpus": gpus, "health": _sampling(self.context.live.health())})


class NodesAPIHandler(APIHandler):
    """``GET api/nodes``: each node of the cluster, its heartbeat and GPUs (admins and
    read-all holders); one host: no nodes, ``cluster`` false."""

    async def get(self):
        self.viewer.check_sees_everyone("api/nodes")
        context = self.context
        _, section = await gpus_and_nodes(context, self.viewer)
        section = section or {"nodes": [], "totals": nodes_totals([])}
        now = usage.isoformat(context.reader.clock())
        self.write_json({"cluster": context.cluster, "as_of": now, **section})


def _sampling(health: dict) -> dict:
    return {key: health[key] for key in ("gpu_sampling", "gpu_sampling_problem") if key in health}


class ExportHandler(APIHandler):
    """``GET api/export.csv``: one invoice line per session (part) in the range.

    Users get their own lines; admins and read-all holders everyone's, or one
    user's with ``?user=``. ``X-Total-Count`` gives the number of lines in all;
    with ``limit``, a ``Link: <…>; rel="next"`` header points to the next page.
    """

    async def get(self):
        viewer = self.viewer
        user = self.query("user") or (None if viewer.sees_everyone else viewer.name)
        if user is not None:
            viewer.check_read(user)
        reader = self.context.reader
        args = self.arguments()
        page = await reader.call(reader.export, user=user, **args)
        text = await reader.call(_csv, page.items)  # thousands of lines: off the event loop
        span = f"{self.query('since') or 'start'}-{self.query('until') or 'now'}"
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", attachment(f"gpu-usage-{user or 'all'}-{span}.csv"))
        self.set_header("X-Total-Count", str(page.total))
        if args["limit"] is not None and page.next_offset is not None:
            query = {k: v for k, v in self.request.query_arguments.items() if k != "offset"}
            query = {k: v[-1].decode() for k, v in query.items()}
            next_url = f"{self.request.path}?{urlencode({**query, 'offset': page.next_offset})}"
            self.set_header("Link", f'<{next_url}>; rel="next"')
        self.finish(text)


def attachment(filename: str) -> str:
    """A ``Content-Disposition`` that saves as `filename` (RFC 6266). Pure.

    Letters and digits of any script, ``-``, ``_`` and ``.`` stay, anything else
    (``/``, quotes, spaces, control characters) becomes ``_``; ``filename*``
    carries that name in UTF-8 (RFC 8187), ``filename`` an ASCII fallback with
    ``_`` for each other character, for clients that know no ``filename*``.
    """
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in filename)
    fallback = "".join(c if c.isascii() else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='-_.')}"


def _csv(rows: list[dict]) -> str:
    """The invoice lines as CSV (RFC 4180 line ends), the header first."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=usage.EXPORT_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(_no_formulas(row) for row in rows)
    return out.getvalue()


#: a text cell starting with one of these is a formula to a spreadsheet (OWASP: CSV injection)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _no_formulas(row: dict) -> dict:
    """Text cells that a spreadsheet would run as a formula get a leading quote."""
    return {
        key: "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value
        for key, value in row.items()
    }


class OpenAPIHandler(JSONHandler):
    """``GET api/openapi.yaml``: the API's description (no usage in it, no login).

    A JSON handler for its errors (a wrong method is a JSON 405 like the rest).
    """

    def get(self):
        self.set_header("Content-Type", "application/yaml; charset=utf-8")
        self.finish(OPENAPI.read_bytes())


class NotFoundAPIHandler(JSONHandler):
    """Any other ``api/…`` path: a JSON 404 that lists the API."""

    def prepare(self):
        raise web.HTTPError(
            404,
            "no such API: use api/usage, api/users, api/gpus, api/nodes, api/server-status, "
            "api/export.csv, api/budgets, api/snapshots, api/homes, api/health or api/openapi.yaml",
        )
