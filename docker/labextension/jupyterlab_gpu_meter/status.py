"""``GET <base_url>gpu-meter/status``: the meter's figures for this server."""

from __future__ import annotations

import json

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web


class StatusHandler(APIHandler):
    @web.authenticated
    async def get(self) -> None:
        self.finish(json.dumps({"available": False, "reason": "not implemented yet"}))


def setup(serverapp) -> None:
    base_url = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(
        ".*$", [(url_path_join(base_url, "gpu-meter", "status"), StatusHandler)]
    )
