"""Project templates: starter projects a user picks at spawn or from JupyterLab's launcher.

A template is a folder ``<slug>/`` with a ``template.json`` (``{"name": …,
"description": …}``), a README and notebooks or scripts. The notebook image
ships some in :data:`IMAGE_FOLDER` (from the repository's ``docker/templates/``;
:data:`SHIPPED` lists them so the hub knows them without reading the image);
admins add their own from host folders or git repositories
(:mod:`~jupyter_gpu_meter.spawner_templates`), which the spawner bind-mounts
read-only at ``<EXTRA_FOLDER>/<slug>``. The chosen one's slug reaches the
server as ``$JUPYTER_GPU_METER_TEMPLATE``; JupyterLab's extension copies it
into ``~/<slug>/`` once, never overwriting a file.

Pure: parsing ``template.json``, reading a folder of templates, merging the
sources, building the mounts. No git, no Docker.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: the variable naming the template chosen at spawn (absent: none)
ENV = "JUPYTER_GPU_METER_TEMPLATE"
#: the notebook image's own templates
IMAGE_FOLDER = "/opt/jupyter-gpu-meter/templates"
#: where admins' templates are mounted, read-only, one folder per slug
EXTRA_FOLDER = "/opt/jupyter-gpu-meter/templates-extra"
#: the file that makes a folder a template
MANIFEST = "template.json"

#: what a slug may be: it becomes the folder ~/<slug>
SLUG_RULE = (
    "1 to 63 lower-case letters, digits or '-', starting with a letter or digit, "
    "e.g. 'ddp-on-n-gpus'"
)
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class TemplateError(ValueError):
    """A template (or a source of them) that cannot be used; the message says why."""


@dataclass(frozen=True)
class Template:
    """One template, as the hub offers it."""

    slug: str
    name: str
    description: str = ""
    #: the host folder of an admin's template ("" for one of the image's own)
    source: str = ""

    @property
    def folder(self) -> str:
        """Where the template is inside the notebook container."""
        return posixpath.join(EXTRA_FOLDER if self.source else IMAGE_FOLDER, self.slug)


#: the templates of the notebook image built from docker/ (a test checks the two agree)
SHIPPED: Mapping[str, Template] = {
    template.slug: template
    for template in (
        Template(
            "ddp-on-n-gpus",
            "DDP on N GPUs",
            "Data-parallel training with torchrun --nproc_per_node=N: one process per GPU "
            "(gloo on 2 CPU processes when there is no GPU).",
        ),
        Template(
            "lora-fine-tune",
            "Fine-tune a language model with LoRA",
            "Freeze a (tiny) transformer language model and train low-rank adapters on a new "
            "task; the same recipe as peft on a Hugging Face model.",
        ),
        Template(
            "yolo-detector",
            "Train a YOLO-style detector",
            "A one-stage grid detector trained on synthetic images with boxes; swap in "
            "ultralytics and a real data set for production.",
        ),
        Template(
            "stable-diffusion",
            "Stable Diffusion inference",
            "The denoising loop behind Stable Diffusion on a tiny denoiser it trains itself; "
            "then the diffusers pipeline for real weights.",
        ),
    )
}


def check_slug(slug, where: str = "template") -> str:
    """`slug` unchanged, or TemplateError saying what a slug may be."""
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
        raise TemplateError(
            f"{where}: {slug!r} is not a template slug: it becomes the folder ~/<slug>; "
            f"use {SLUG_RULE}"
        )
    return slug


def parse_manifest(text: str, slug: str, where: str) -> Template:
    """The :class:`Template` a ``template.json`` text describes; `where` names it in errors."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise TemplateError(f"{where}: not JSON ({e})") from None
    if not isinstance(data, Mapping):
        raise TemplateError(f'{where}: must be an object, e.g. {{"name": "My project"}}')
    unknown = set(data) - {"name", "description"}
    if unknown:
        raise TemplateError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: name, description"
        )
    name, description = data.get("name"), data.get("description", "")
    if not isinstance(name, str) or not name.strip():
        raise TemplateError(f"{where}: 'name' is required, the text the spawn form shows")
    if not isinstance(description, str):
        raise TemplateError(f"{where}: 'description' must be text, got {description!r}")
    return Template(check_slug(slug, where), name.strip(), description.strip())


def read_folder(folder: str | Path) -> list[Template]:
    """The templates in `folder`: each sub-folder holding a ``template.json``, by slug.

    Other sub-folders (``.git``, data) are skipped; TemplateError if `folder`
    is not a readable folder or a ``template.json`` is broken.
    """
    root = Path(folder)
    if not root.is_dir():
        raise TemplateError(f"{root}: no such folder (it must hold one folder per template)")
    found = []
    for child in sorted(root.iterdir()):
        manifest = child / MANIFEST
        if child.name.startswith(".") or not child.is_dir() or not manifest.is_file():
            continue
        try:
            text = manifest.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as e:
            raise TemplateError(f"{manifest}: cannot be read ({e})") from None
        template = parse_manifest(text, child.name, str(manifest))
        found.append(Template(template.slug, template.name, template.description, str(child)))
    return found


def merge(shipped: Sequence[str], sources: Iterable[Sequence[Template]]) -> dict[str, Template]:
    """slug -> :class:`Template`: the `shipped` slugs of :data:`SHIPPED`, then each source's.

    TemplateError when two templates share a slug: each becomes ``~/<slug>``.
    """
    templates = {slug: SHIPPED[slug] for slug in shipped}
    for source in sources:
        for template in source:
            if template.slug in templates:
                other = templates[template.slug].source or "the notebook image"
                raise TemplateError(
                    f"template {template.slug!r} is defined twice, in {template.source} and "
                    f"in {other}: rename one folder"
                )
            templates[template.slug] = template
    return templates


def template_mounts(templates: Iterable[Template]) -> list[dict]:
    """Docker API mounts of the admins' templates: read-only binds at their folders."""
    return [
        {"Type": "bind", "Source": t.source, "Target": t.folder, "ReadOnly": True}
        for t in templates
        if t.source
    ]
