"""The web app's log without secrets: OAuth codes and states, tokens, XSRF tokens.

A URL may carry a secret in its query: the hub's OAuth sends the browser back
to ``oauth_callback?code=…&state=…``, a script may pass ``?token=…``. Tornado
logs a request's URL in three places (the access log, a refused request's
warning, an uncaught exception's error); each line the web app logs goes
through :func:`scrub_secrets` first.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

#: query arguments whose values are never logged (names compared case-insensitively)
SECRET_ARGUMENTS = frozenset({"code", "state", "token", "access_token", "_xsrf"})
#: the loggers through which Tornado and the hub's auth log request URLs, and ours
LOGGERS = ("tornado.access", "tornado.application", "tornado.general", "jupyter_gpu_meter.web")
SCRUBBED = "[secret]"

# name=value in a query; a value ends where the argument, the URL or a quoted repr ends
_ARGUMENT = re.compile(r"(?<=[?&])([^=&\s#?]+)=([^&\s#'\"]*)")


def scrub_secrets(text: str) -> str:
    """`text` with the value of every secret query argument replaced by ``[secret]``. Pure.

    ``GET /oauth_callback?code=abc&state=xyz&next=/`` becomes
    ``GET /oauth_callback?code=[secret]&state=[secret]&next=/``. The names are
    :data:`SECRET_ARGUMENTS`, also when percent-encoded or in another case.
    """
    if "=" not in text:
        return text

    def scrub(match: re.Match) -> str:
        name = unquote_plus(match.group(1)).lower()
        return f"{match.group(1)}={SCRUBBED}" if name in SECRET_ARGUMENTS else match.group(0)

    return _ARGUMENT.sub(scrub, text)


#: the hub's OAuth library logs a login's mismatched state values with this format
_STATE_MISMATCH = "oauth state argument %r != cookie %s=%r"


class ScrubSecrets(logging.Filter):
    """A logging filter that passes every record, with :func:`scrub_secrets` applied."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _STATE_MISMATCH and isinstance(record.args, tuple):
            record.msg, record.args = "oauth state argument != cookie %s", record.args[1:2]
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format: the logging module reports it later
            return True
        scrubbed = scrub_secrets(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


_FILTER = ScrubSecrets()


def scrub_web_logs() -> None:
    """Scrub every line of :data:`LOGGERS` from now on (idempotent)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def log_request(handler) -> None:
    """The access log: one line per request, its secrets scrubbed; health checks at DEBUG."""
    status = handler.get_status()
    if handler.request.path.endswith("api/health"):
        level = logging.DEBUG
    else:
        level = logging.INFO if status < 400 else logging.WARNING
    logging.getLogger("jupyter_gpu_meter.web").log(
        level,
        "%d %s %.1fms",
        status,
        scrub_secrets(handler._request_summary()),
        1000 * handler.request.request_time(),
    )
