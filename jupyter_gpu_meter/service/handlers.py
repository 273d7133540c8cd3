"""HTTP handlers of the meter service. Storage comes in through ``initialize()``."""

from __future__ import annotations

import json
import re

from tornado import web

#: a database's own error code: SQLSTATE (PostgreSQL) or SQLITE_BUSY and friends
_ERROR_CODE = re.compile(r"[A-Z0-9_]{1,40}")


def _class_name(error: BaseException) -> str:
    cls = type(error)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def error_summary(error: BaseException | None) -> str:
    """What may be shown of `error` to anyone: its class, its database driver's error
    class and code; never its message, which for a database error holds the SQL and
    its parameters (user names, times). Pure.

    ``sqlalchemy.exc.OperationalError (psycopg.OperationalError SQLSTATE 08006)``;
    ``""`` for None. The log has the whole error.
    """
    if error is None:
        return ""
    summary = _class_name(error)
    cause = getattr(error, "orig", None)  # a SQLAlchemy DBAPIError: the driver's error
    if isinstance(cause, BaseException):
        detail = _class_name(cause)
        sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        name = getattr(cause, "sqlite_errorname", None)
        for label, code in (("SQLSTATE ", sqlstate), ("", name)):
            if isinstance(code, str) and _ERROR_CODE.fullmatch(code):
                detail += f" {label}{code}"
        summary += f" ({detail})"
    return summary


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
