"""Project templates in JupyterLab: the copy at server start, and their routes.

- At server start: ``$JUPYTER_GPU_METER_TEMPLATE`` (the template chosen at
  spawn) is copied into ``~/<slug>/`` the first time (:mod:`.template_copy`).
- ``GET <base_url>gpu-meter/templates``: ``{"templates": [{"slug", "name",
  "description"}]}``, the image's and the admin's.
- ``POST <base_url>gpu-meter/templates/<slug>``: copy it now (missing files
  only); ``{"path", "readme", "copied", "kept"}``, paths relative to the
  server's root folder. 404 JSON for an unknown slug.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .template_copy import (
    ENV,
    ROOTS,
    TemplateNotFound,
    copy_at_start,
    copy_template,
    find_template,
)
from .template_copy import list_templates as _list


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


class TemplatesHandler(APIHandler):
    @web.authenticated
    async def get(self) -> None:
        self.finish(json.dumps({"templates": _list()}))


def copy_now(slug: str, root_dir: str | None, roots=ROOTS, home: Path | None = None) -> dict:
    """What ``POST templates/<slug>`` answers: the copy's paths relative to `root_dir`."""
    home = home or _home()
    result = copy_template(find_template(slug, roots), home, slug)
    root = Path(root_dir or home).expanduser().resolve()

    def shown(path: str | None) -> str | None:
        if path is None:
            return None
        full = (home / path).resolve()
        return full.relative_to(root).as_posix() if full.is_relative_to(root) else str(full)

    return {
        "path": shown(slug),
        "readme": shown(result.readme),
        "copied": result.copied,
        "kept": result.kept,
    }


class TemplateCopyHandler(APIHandler):
    @web.authenticated
    async def post(self, slug: str) -> None:
        root = self.settings.get("server_root_dir")
        try:
            answer = await asyncio.to_thread(copy_now, slug, root)
        except TemplateNotFound as e:
            raise web.HTTPError(404, str(e)) from None
        self.finish(json.dumps(answer))


def copy_chosen(log, roots=ROOTS, home: Path | None = None) -> None:
    """The copy at server start; a failure is logged and the server starts all the same."""
    slug = os.environ.get(ENV, "")
    if not slug:
        return
    try:
        result = copy_at_start(slug, home or _home(), roots)
    except (TemplateNotFound, OSError) as e:
        log.error("Template %s not copied into the home: %s", slug, e)
        return
    if result is None:
        log.info("Template %s was copied at an earlier start; left as it is", slug)
    else:
        log.info(
            "Template %s copied into ~/%s: %d file(s) new, %d kept",
            slug, slug, len(result.copied), len(result.kept),
        )  # fmt: skip


def setup(serverapp) -> None:
    base_url = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base_url, "gpu-meter", "templates"), TemplatesHandler),
            (
                url_path_join(base_url, "gpu-meter", "templates", "([a-z0-9-]+)"),
                TemplateCopyHandler,
            ),
        ],
    )
    copy_chosen(serverapp.log)
