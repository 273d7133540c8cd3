"""Copying a project template into the user's home: once, never overwriting a file.

Templates are folders ``<slug>/`` with a ``template.json`` under the image's
``/opt/jupyter-gpu-meter/templates`` and the admin's read-only mounts under
``/opt/jupyter-gpu-meter/templates-extra`` (the hub's
``jupyter_gpu_meter.project_templates``). :func:`copy_template` copies one into
``~/<slug>/`` file by file and keeps every file that is already there;
:func:`copy_at_start` does that for ``$JUPYTER_GPU_METER_TEMPLATE`` the first
time a server starts with it, and never again (a file the user deleted stays
deleted). Only the standard library: the server extension and the tests
import it alike.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

#: the variable naming the template chosen at spawn
ENV = "JUPYTER_GPU_METER_TEMPLATE"
#: where templates are, the image's first
ROOTS = ("/opt/jupyter-gpu-meter/templates", "/opt/jupyter-gpu-meter/templates-extra")
MANIFEST = "template.json"
#: under the home: which templates were copied at a start already
RECORD = ".local/share/jupyter-gpu-meter/templates-copied.json"
_SLUG_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")


class TemplateNotFound(LookupError):
    """No template of that slug; the message lists those there are."""


@dataclass
class CopyResult:
    """What :func:`copy_template` did: paths relative to the home."""

    folder: str
    copied: list[str] = field(default_factory=list)
    #: files already in the home, left as they were
    kept: list[str] = field(default_factory=list)
    #: the README to open, if the template has one
    readme: str | None = None


def _is_slug(slug: str) -> bool:
    return 0 < len(slug) <= 63 and slug[0] != "-" and set(slug) <= _SLUG_CHARS


def list_templates(roots=ROOTS) -> list[dict]:
    """``{"slug", "name", "description"}`` of each template in `roots` (first root wins)."""
    found: dict[str, dict] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            manifest = folder / MANIFEST
            if folder.name in found or not _is_slug(folder.name) or not manifest.is_file():
                continue
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
                name, description = data["name"], data.get("description", "")
            except (OSError, ValueError, KeyError, TypeError):
                continue  # the hub validated it; a broken one is not offered
            found[folder.name] = {"slug": folder.name, "name": name, "description": description}
    return list(found.values())


def find_template(slug: str, roots=ROOTS) -> Path:
    """The folder of template `slug`, or TemplateNotFound listing the slugs there are."""
    if _is_slug(slug):
        for root in map(Path, roots):
            if (root / slug / MANIFEST).is_file():
                return root / slug
    there = ", ".join(t["slug"] for t in list_templates(roots)) or "none"
    raise TemplateNotFound(f"no template {slug[:64]!r}; there are: {there}")


def copy_template(source: Path, home: Path, slug: str) -> CopyResult:
    """Copy the files of `source` into ``home/slug``, keeping every file already there.

    Regular files only (links in a template are skipped), ``template.json``
    left out; copies are the user's, writable, executable where the original is.
    """
    target = home / slug
    result = CopyResult(folder=slug)
    for directory, folders, files in os.walk(source):
        folders[:] = sorted(f for f in folders if not (Path(directory) / f).is_symlink())
        relative = Path(directory).relative_to(source)
        for name in sorted(files):
            original = Path(directory) / name
            path = relative / name
            if path == Path(MANIFEST) or original.is_symlink() or not original.is_file():
                continue
            destination = target / path
            shown = str(Path(slug) / path)
            if destination.exists() or destination.is_symlink():
                result.kept.append(shown)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            _copy_new(original, destination)
            result.copied.append(shown)
    readme = target / "README.md"
    result.readme = str(Path(slug) / "README.md") if readme.is_file() else None
    return result


def _copy_new(original: Path, destination: Path) -> None:
    """Write `destination` only if it does not exist (O_EXCL): never over a user's file."""
    executable = original.stat().st_mode & stat.S_IXUSR
    mode = 0o755 if executable else 0o644
    try:
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as out, original.open("rb") as src:
        shutil.copyfileobj(src, out)


def _read_record(home: Path) -> dict:
    try:
        data = json.loads((home / RECORD).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def copy_at_start(slug: str, home: Path, roots=ROOTS) -> CopyResult | None:
    """Copy template `slug` into `home` unless a start copied it before; None if it did.

    TemplateNotFound when there is no such template.
    """
    record = _read_record(home)
    if slug in record.get("copied", []):
        return None
    result = copy_template(find_template(slug, roots), home, slug)
    record["copied"] = sorted({*record.get("copied", []), slug})
    path = home / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(record, f)
    os.replace(f.name, path)
    return result
