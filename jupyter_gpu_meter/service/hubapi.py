"""The hub's REST API, as the service calls it with its own token (least scope)."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from ..scopes import STOP_SCOPE

log = logging.getLogger(__name__)


class HubAPI:
    """Calls the hub's API at `api_url` (``http://127.0.0.1:8081/hub/api``) with `token`."""

    def __init__(self, api_url: str, token: str, *, client: AsyncHTTPClient | None = None):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.client = client or AsyncHTTPClient()

    async def stop_server(self, user: str, server: str = "") -> int:
        """Ask the hub to stop `user`'s `server` ("" for the default one); the hub's status.

        202: stopping, 204: stopped. Raises an HTTPError whose message says what
        went wrong: not running (400), no such user (404), the service lacks
        the scope (503).
        """
        if not self.token:
            raise web.HTTPError(
                503, "the meter has no hub API token: it must run as a hub service to stop servers"
            )
        path = f"/users/{quote(user, safe='')}/" + (
            f"servers/{quote(server, safe='')}" if server else "server"
        )
        request = HTTPRequest(
            self.api_url + path,
            method="DELETE",
            headers={"Authorization": f"token {self.token}"},
            request_timeout=60,
        )
        try:
            response = await self.client.fetch(request)
        except HTTPClientError as e:
            message = _hub_message(e)
            if e.code == 403:
                raise web.HTTPError(
                    503,
                    "the hub refused the meter's request to stop %s/%s (%s): give the service "
                    "the scope %s (jupyter_gpu_meter.hubconfig.setup_meter does)",
                    user,
                    server,
                    message,
                    STOP_SCOPE,
                ) from None
            if e.code in (400, 404):
                raise web.HTTPError(
                    e.code, "cannot stop %s/%s: %s", user, server, message
                ) from None
            raise web.HTTPError(
                502, "the hub failed to stop %s/%s: %s %s", user, server, e.code, message
            ) from None
        return response.code

    async def _call(self, method: str, path: str, body=None):
        request = HTTPRequest(
            self.api_url + path,
            method=method,
            headers={"Authorization": f"token {self.token}"},
            body=None if body is None else json.dumps(body),
            request_timeout=30,
        )
        response = await self.client.fetch(request)
        return json.loads(response.body) if response.body else None

    async def user_groups(self, user: str) -> list[str]:
        """The names of `user`'s groups (scope ``read:users:groups``), for group budgets."""
        model = await self._call("GET", f"/users/{quote(user, safe='')}")
        return list(model.get("groups") or [])

    async def report_activity(self, user: str, server: str, at) -> None:
        """Tell the hub `user`'s `server` was active at `at` (scope ``users:activity``)."""
        stamp = at.isoformat().replace("+00:00", "Z")
        body = {"last_activity": stamp, "servers": {server: {"last_activity": stamp}}}
        await self._call("POST", f"/users/{quote(user, safe='')}/activity", body)


def _hub_message(error: HTTPClientError) -> str:
    body = error.response.body if error.response is not None else b""
    try:
        return json.loads(body)["message"]
    except (ValueError, KeyError, TypeError):
        return error.message or str(error.code)
