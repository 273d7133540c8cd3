"""The hub's side of project templates: the admin's settings, git, and the spawner's part.

:class:`Templates` (``c.Templates``) says which of the image's templates are
offered and where the admin's own come from: host folders, and git
repositories that the hub clones (and refreshes) with the ``git`` command
into a cache folder. :class:`TemplatesMixin` is mixed into
:class:`~jupyter_gpu_meter.GPUDockerSpawner`: at each start it reads the
templates off the event loop, bind-mounts the admin's read-only at
``/opt/jupyter-gpu-meter/templates-extra/<slug>`` and sets
``$JUPYTER_GPU_METER_TEMPLATE`` to the one chosen.

Binds name host paths, so the hub must see the same filesystem as the Docker
engine (one host, as in every supported setup).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import shutil
import subprocess
import threading
from datetime import datetime
from pathlib import Path
from typing import ClassVar

from traitlets import HasTraits, Int, List, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from .clock import utcnow
from .container import ContainerRefused, host_path_problems
from .project_templates import (
    ENV,
    EXTRA_FOLDER,
    SHIPPED,
    Template,
    TemplateError,
    merge,
    read_folder,
    template_mounts,
)

#: the longest one git command may take, in seconds
GIT_TIMEOUT = 120


def _git(*args: str) -> None:
    """Run git; TemplateError with its message when it fails. Never prompts."""
    command = args[2] if args[0] == "-C" else args[0]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
    try:
        # the admin's own configuration, never a user's input; git found on the hub's PATH
        subprocess.run(  # noqa: S603
            ["git", *args],  # noqa: S607
            check=True,
            capture_output=True,
            text=True,
            env=env,
            timeout=GIT_TIMEOUT,
        )
    except FileNotFoundError:
        raise TemplateError("the git command is not installed on the hub's host") from None
    except subprocess.TimeoutExpired:
        raise TemplateError(f"git {command} took longer than {GIT_TIMEOUT} s") from None
    except subprocess.CalledProcessError as e:
        lines = (e.stderr or e.stdout or "").strip().splitlines()
        fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
        reason = (fatal or lines or [f"exit {e.returncode}"])[0]
        raise TemplateError(f"git {command} failed: {reason}") from None


def split_repository(entry: str) -> tuple[str, str]:
    """``"url#ref"`` -> (url, ref); ref "" for the repository's default branch."""
    url, _, ref = entry.partition("#")
    return url, ref


def clone_path(cache_dir: str | Path, entry: str) -> Path:
    """The folder a repository entry (``url`` or ``url#ref``) is cloned into."""
    return Path(cache_dir) / hashlib.sha256(entry.encode()).hexdigest()[:16]


def sync_repository(entry: str, cache_dir: str | Path) -> Path:
    """Clone ``url[#ref]`` into `cache_dir`, or bring an earlier clone up to date.

    Shallow (the newest commit only). The working tree is updated in place, so
    running servers' bind mounts see the new files. TemplateError when git fails.
    """
    url, ref = split_repository(entry)
    path = clone_path(cache_dir, entry)
    if (path / ".git").is_dir():
        _git("-C", str(path), "fetch", "--quiet", "--depth", "1", "origin", ref or "HEAD")
        _git("-C", str(path), "reset", "--quiet", "--hard", "FETCH_HEAD")
        _git("-C", str(path), "clean", "--quiet", "-ffdx")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    branch = ("--branch", ref) if ref else ()
    _git("clone", "--quiet", "--depth", "1", *branch, "--", url, str(partial))
    partial.rename(path)
    return path


class Templates(LoggingConfigurable):
    """Project templates offered at spawn: the image's, and the admin's own."""

    shipped = List(
        Unicode(),
        default_value=list(SHIPPED),
        help=f"""
        Which of the notebook image's own templates to offer, by slug (the image
        has them in /opt/jupyter-gpu-meter/templates). Default: all of
        {", ".join(SHIPPED)}. ``[]`` offers none of them, e.g. for an image of
        your own that lacks them.
        """,
    ).tag(config=True)

    @validate("shipped")
    def _check_shipped(self, proposal):
        unknown = [slug for slug in proposal.value if slug not in SHIPPED]
        if unknown:
            raise ValueError(
                f"c.Templates.shipped: unknown template(s) {', '.join(map(repr, unknown))}; "
                f"the image has: {', '.join(SHIPPED)}"
            )
        return proposal.value

    directories = List(
        Unicode(),
        help="""
        Host folders holding templates of your own, e.g. ``["/srv/templates"]``:
        each sub-folder with a ``template.json`` (``{"name": "…", "description":
        "…"}``) is one template, its folder name the slug. Mounted read-only into
        every server, so changes show at the next start.
        """,
    ).tag(config=True)

    @validate("directories")
    def _check_directories(self, proposal):
        for path in proposal.value:
            if not posixpath.isabs(path):
                raise ValueError(
                    f"c.Templates.directories: {path!r} is not an absolute path; "
                    "give the host folder, e.g. '/srv/templates'"
                )
            if host_path_problems(path):
                raise ValueError(
                    f"c.Templates.directories: {path!r} is a system or Docker folder; "
                    "keep templates in a folder of their own, e.g. '/srv/templates'"
                )
        return proposal.value

    git_repositories = List(
        Unicode(),
        help="""
        Git repositories of templates, laid out like a folder of
        :attr:`directories`, as ``"<url>"`` or ``"<url>#<branch or tag>"``, e.g.
        ``["https://github.com/my-org/templates.git#main"]``. The hub clones each
        with the ``git`` command into :attr:`git_cache_dir` and fetches it again
        at a start when the clone is older than :attr:`git_refresh_seconds`. Use
        a URL that needs no password (or a deploy key in the hub user's SSH
        config): git never prompts.
        """,
    ).tag(config=True)

    @validate("git_repositories")
    def _check_repositories(self, proposal):
        for entry in proposal.value:
            url, _ = split_repository(entry)
            if not url or any(ch.isspace() for ch in entry) or url.startswith("-"):
                raise ValueError(
                    f"c.Templates.git_repositories: {entry!r} is not a repository; use "
                    "'<url>' or '<url>#<branch>', e.g. 'https://github.com/my-org/templates.git'"
                )
        return proposal.value

    git_cache_dir = Unicode(
        help="""
        Where the hub keeps its clones of :attr:`git_repositories`, an absolute
        host path (the servers bind-mount from it), e.g.
        ``/var/lib/jupyterhub/templates``. Default: ``jupyter-gpu-meter-templates``
        in the hub's working folder.
        """,
    ).tag(config=True)

    @default("git_cache_dir")
    def _git_cache_dir_default(self):
        return os.path.abspath("jupyter-gpu-meter-templates")

    git_refresh_seconds = Int(
        300,
        min=0,
        help="""
        Seconds a clone of a template repository is used before a start fetches
        it again, e.g. ``3600``; ``0`` fetches at every start. A failed fetch
        keeps the last clone (logged).
        """,
    ).tag(config=True)

    #: entry -> when it was last fetched, for every Templates of this process
    _fetched: ClassVar[dict[str, datetime]] = {}
    _git_lock: ClassVar[threading.Lock] = threading.Lock()

    def repository_folder(self, entry: str, now: datetime) -> Path:
        """The clone of `entry`, fetched if older than :attr:`git_refresh_seconds`.

        Blocking (git). A failed fetch with an earlier clone logs and uses that
        clone; without one, TemplateError.
        """
        path = clone_path(self.git_cache_dir, entry)
        key = f"{self.git_cache_dir}\0{entry}"
        with self._git_lock:
            last = self._fetched.get(key)
            if last is not None and (now - last).total_seconds() < self.git_refresh_seconds:
                return path
            try:
                path = sync_repository(entry, self.git_cache_dir)
            except TemplateError as e:
                if not (path / ".git").is_dir():
                    raise TemplateError(f"template repository {entry}: {e}") from None
                self.log.warning("Template repository %s: %s; using the last clone", entry, e)
            self._fetched[key] = now
            return path

    def available(self, now: datetime | None = None) -> dict[str, Template]:
        """slug -> :class:`Template` offered now. Blocking (disk, git).

        A source that fails (a missing folder, a broken ``template.json``, a
        repository git cannot clone, a slug taken already) is logged and left
        out: the other templates, and starts, go on.
        """
        now = now or utcnow()
        sources = [(path, lambda path=path: read_folder(path)) for path in self.directories]
        sources += [
            (entry, lambda entry=entry: read_folder(self.repository_folder(entry, now)))
            for entry in self.git_repositories
        ]
        good: list[list[Template]] = []
        for name, read in sources:
            try:
                found = read()
                merge(self.shipped, [*good, found])
            except TemplateError as e:
                self.log.error("Templates from %s left out: %s", name, e)
                continue
            good.append(found)
        return merge(self.shipped, good)


class TemplatesMixin(HasTraits):
    """Templates for a DockerSpawner with ``meter_executor`` (see the module's doc)."""

    #: the slug chosen for this run ("" for none)
    template = Unicode("")

    @property
    def project_templates(self) -> Templates:
        """The template settings (``c.Templates``)."""
        if not hasattr(self, "_project_templates"):
            self._project_templates = Templates(parent=self)
        return self._project_templates

    async def available_templates(self) -> dict[str, Template]:
        """:meth:`Templates.available`, read on the spawner's meter executor."""
        return await asyncio.wrap_future(
            self.meter_executor.submit(self.project_templates.available)
        )

    def get_env(self):
        env = super().get_env()
        if self.template:
            env[ENV] = self.template
        else:
            env.pop(ENV, None)
        return env

    def _with_templates(self, host_config: dict | None, templates) -> dict:
        """A copy of `host_config` with the admin's `templates` bind-mounted read-only."""
        host = dict(host_config or {})
        mounts = template_mounts(templates)
        if not mounts:
            return host
        taken = [str(bind).split(":")[1] for bind in host.get("Binds") or [] if ":" in str(bind)]
        taken += [str(mount.get("Target", "")) for mount in host.get("Mounts") or []]
        clash = [
            target
            for target in taken
            if posixpath.normpath(target) in (EXTRA_FOLDER, posixpath.dirname(EXTRA_FOLDER))
            or posixpath.normpath(target).startswith(EXTRA_FOLDER + "/")
        ]
        if clash:
            raise ContainerRefused(
                f"the configuration mounts something at {clash[0]}, where the admin's "
                f"templates go ({EXTRA_FOLDER}/<slug>): mount it elsewhere"
            )
        host["Mounts"] = [*(host.get("Mounts") or []), *mounts]
        return host
