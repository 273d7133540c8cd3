"""HTTP handlers of the meter service. Storage comes in through ``initialize()``."""

from __future__ import annotations

import json

from tornado import web


class JSONHandler(web.RequestHandler):
    """Errors as JSON: ``{"status": 404, "message": "..."}``."""

    def write_json(self, data, status: int = 200):
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(data, default=str))

    def write_error(self, status_code, **kwargs):
        message = self._reason
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], web.HTTPError) and exc_info[1].log_message:
            message = exc_info[1].log_message % exc_info[1].args
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"status": status_code, "message": message}))


class HealthHandler(JSONHandler):
    """``GET api/health``: is the meter recording, and how (no usage data in it)."""

    def initialize(self, meter):
        self.meter = meter

    def get(self):
        self.write_json(self.meter.health())
