"""The spawn form: what a user chooses a server with, as HTML, and the choice it posts.

Pure: :func:`spawn_prices` prices each profile and GPU model (the money words
come from the usage core); :func:`render_spawn_form` takes what the spawner
found (profiles, the GPUs of each model and how many are free, prices, the
budget's text, datasets, snapshots) and returns HTML; :func:`options_from_form`
turns the posted form into ``user_options``. The spawner gathers the inputs
(Docker, the ledger) and validates the options whichever form posted them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import jinja2

from .gpus import GPU
from .usage.money import format_rate

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
)


def model_counts(gpus: Iterable[GPU], held: Iterable[str]) -> dict[str, tuple[int, int]]:
    """GPU model -> (how many, how many free): healthy and not in `held` (UUIDs)."""
    held = set(held)
    models: dict[str, tuple[int, int]] = {}
    for gpu in gpus:
        total, free = models.get(gpu.model, (0, 0))
        models[gpu.model] = (total + 1, free + (gpu.healthy and gpu.uuid not in held))
    return models


def render_spawn_form(
    *,
    profiles: Sequence,
    models: Mapping[str, tuple[int, int]],
    prices: Mapping,
    budget_left: str | None = None,
    max_gpus_per_user: int | None = None,
    default_gpus: int = 0,
    datasets: Sequence = (),
    datasets_folder: str = "",
    user_options: Mapping | None = None,
    snapshots: Sequence = (),
    images: Sequence[str] = (),
    profile_images: Mapping[str, Sequence[str]] | None = None,
    image_default: str = "",
    templates: Sequence = (),
) -> str:
    """The spawn form's HTML.

    `profiles`: :class:`~jupyter_gpu_meter.choice.Profile` list (empty: a GPU
    count and model instead); `models`: :func:`model_counts`; `prices`: what
    :func:`spawn_prices` returns; `budget_left`: the
    user's remaining budget as text ("12.50 of 50.00 USD …"), None without a
    budget; `datasets`: :class:`~jupyter_gpu_meter.datasets.Dataset` list
    mounted in `datasets_folder`; `user_options`: the last choice, preselected;
    `snapshots`: :class:`~jupyter_gpu_meter.snapshots.Snapshot` list to start from;
    `images`: the image names offered without profiles, `profile_images` those of
    each profile (slug -> names; :func:`~jupyter_gpu_meter.images.offered`: a select
    only where there are two or more), `image_default` the name preselected.
    `templates`: :class:`~jupyter_gpu_meter.project_templates.Template` list to copy in.
    """
    user_options = user_options or {}
    chosen = user_options.get("profile") or next(
        (p.slug for p in profiles if p.default), profiles[0].slug if profiles else ""
    )
    largest = max((total for total, _ in models.values()), default=0)
    return _templates.get_template("options_form.html").render(
        profiles=profiles,
        chosen=chosen,
        models=dict(models),
        prices=prices,
        budget_left=budget_left,
        only_model=next(iter(models)) if len(models) == 1 else None,
        free_any=sum(free for _, free in models.values()),
        total_any=sum(total for total, _ in models.values()),
        limit=largest if max_gpus_per_user is None else min(largest, max_gpus_per_user),
        default_gpus=default_gpus,
        datasets=list(datasets),
        datasets_folder=datasets_folder,
        chosen_datasets=user_options.get("datasets") or [],
        snapshots=list(snapshots),
        images=list(images),
        profile_images=dict(profile_images or {}),
        chosen_image=user_options.get("image") or image_default,
        templates=list(templates),
        chosen_template=user_options.get("template") or "",
    )


def options_from_form(formdata: Mapping) -> dict:
    """``user_options`` from the posted form (lists of strings by field name)."""

    def first(key):
        return (formdata.get(key) or [""])[0].strip()

    # ticked dataset checkboxes, each posted as datasets=<name>
    datasets = [name.strip() for name in formdata.get("datasets") or [] if name.strip()]
    if first("profile"):
        options = {"profile": first("profile")}
        # each profile's image select is its own field: the chosen profile's counts
        image = first("image-" + first("profile"))
    else:
        options = {"gpus": first("gpus")} if first("gpus") else {}
        if first("gpu_model"):
            options["gpu_model"] = first("gpu_model")
        image = first("image")
    if image:
        options["image"] = image
    if first("snapshot"):
        options["snapshot"] = first("snapshot")
    if datasets:
        options["datasets"] = datasets
    if first("template"):
        options["template"] = first("template")
    return options


def spawn_prices(profiles: Sequence, models: Sequence[str], pricing) -> dict:
    """What the spawn form shows: each profile's price per hour, each model's per GPU-hour.

    `pricing` is a :class:`~jupyter_gpu_meter.pricing.Pricing`; a profile without
    a model of its own costs what the one model present costs, or "from" the
    cheapest of them. Returns ``{"profiles": {slug: text}, "models": {model:
    text}, "cpu": text}``.
    """
    currency = pricing.currency

    def rate(model, gpus):
        return pricing.snapshot(model, gpus).hourly_rate

    texts = {}
    for profile in profiles:
        if not profile.gpus:
            texts[profile.slug] = format_rate(rate("", 0), currency)
            continue
        candidates = [profile.gpu_model] if profile.gpu_model else list(models)
        rates = sorted({rate(model, profile.gpus) for model in candidates}) or [
            rate("", profile.gpus)
        ]
        text = format_rate(rates[0], currency)
        texts[profile.slug] = text if len(rates) == 1 else "from " + text
    return {
        "profiles": texts,
        "models": {model: format_rate(rate(model, 1), currency, "GPU-hour") for model in models},
        "cpu": format_rate(rate("", 0), currency),
    }
