"""What a user asked for: profiles and ``user_options``, validated. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .images import ImageNotAllowed, normalize_allowed, profile_images, resolve_image

#: keys a profile in ``profile_list`` may have
PROFILE_KEYS = (
    "slug",
    "display_name",
    "description",
    "default",
    "gpus",
    "gpu_model",
    "cpu_limit",
    "mem_limit",
    "image",
    "allowed_images",
    "datasets",
    "ssh",
)
#: keys ``user_options`` may have
OPTION_KEYS = ("gpus", "gpu_model", "profile", "datasets", "snapshot", "image", "template")
#: the longest snapshot id ``user_options`` may name
MAX_SNAPSHOT_ID = 64


class ChoiceError(ValueError):
    """A user's choice that cannot be served; the message says what is allowed."""


@dataclass(frozen=True)
class Profile:
    slug: str
    display_name: str
    description: str = ""
    default: bool = False
    gpus: int = 0
    gpu_model: str | None = None
    cpu_limit: float | None = None
    mem_limit: str | int | None = None
    image: str | None = None
    #: the datasets this profile may mount; None: all
    datasets: tuple[str, ...] | None = None
    #: the images its servers may run (:func:`~jupyter_gpu_meter.images.normalize_allowed`);
    #: None: the spawner's ``allowed_images``
    allowed_images: dict[str, str] | str | None = None
    #: SSH into its servers on or off; None: the spawner's ``ssh_enabled``
    ssh: bool | None = None


@dataclass(frozen=True)
class Choice:
    """A resolved request: how many GPUs of which model, and the profile's overrides."""

    gpus: int
    gpu_model: str | None = None
    profile: str = ""
    cpu_limit: float | None = None
    mem_limit: str | int | None = None
    image: str | None = None
    #: names of the datasets to mount, in the order asked for
    datasets: tuple[str, ...] = ()
    #: the id of one of the user's snapshots to restore into the home first ("" for none)
    snapshot: str = ""
    #: the display name of the image (``image`` is its reference); "" where none is known
    image_name: str = ""
    #: the slug of the project template to copy into the home ("" for none)
    template: str = ""
    #: the profile's ``ssh``: SSH on or off for this server; None: the spawner's setting
    ssh: bool | None = None


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def parse_profiles(entries: Sequence[Mapping]) -> tuple[Profile, ...]:
    """Profiles from ``profile_list`` config; raises ValueError naming the problem."""
    profiles, slugs = [], set()
    for position, entry in enumerate(entries):
        where = f"profile #{position} ({entry.get('display_name', entry.get('slug', '?'))!r})"
        unknown = set(entry) - set(PROFILE_KEYS)
        if unknown:
            raise ValueError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(PROFILE_KEYS)}"
            )
        if not entry.get("display_name"):
            raise ValueError(f"{where}: 'display_name' is required")
        slug = entry.get("slug") or slugify(entry["display_name"])
        if not slug or slug in slugs:
            raise ValueError(f"{where}: slug {slug!r} is empty or used twice; set a unique 'slug'")
        slugs.add(slug)
        gpus = entry.get("gpus", 0)
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
            raise ValueError(f"{where}: 'gpus' must be a whole number >= 0, got {gpus!r}")
        datasets = entry.get("datasets")
        if datasets is not None:
            if not isinstance(datasets, (list, tuple)) or not all(
                isinstance(name, str) for name in datasets
            ):
                raise ValueError(
                    f"{where}: 'datasets' must be a list of dataset names, e.g. ['imagenet'] "
                    f"([] for none), got {datasets!r}"
                )
            datasets = tuple(datasets)
        if not isinstance(entry.get("ssh", False), bool):
            raise ValueError(
                f"{where}: 'ssh' must be True or False (SSH into this profile's servers; "
                f"absent: c.GPUDockerSpawner.ssh_enabled decides), got {entry['ssh']!r}"
            )
        allowed = entry.get("allowed_images")
        if allowed is not None:
            allowed = normalize_allowed(allowed, f"{where}: 'allowed_images'")
        profiles.append(
            Profile(**{**entry, "slug": slug, "datasets": datasets, "allowed_images": allowed})
        )
    if sum(profile.default for profile in profiles) > 1:
        raise ValueError("more than one profile has 'default': True; mark at most one")
    return tuple(profiles)


def _as_count(value, limit: int) -> int:
    allowed = f"'gpus' must be a whole number from 0 to {limit}"
    if isinstance(value, bool):
        raise ChoiceError(f"{allowed}, got {value!r}")
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= limit:
        raise ChoiceError(f"{allowed}, got {value!r}")
    return value


def parse_datasets(value, available: Sequence[str]) -> tuple[str, ...]:
    """The ``datasets`` option: a list of distinct names out of `available`, or ChoiceError."""
    known = f"available: {', '.join(available) or 'none'}"
    if not isinstance(value, list):
        raise ChoiceError(
            f"'datasets' must be a list of dataset names, e.g. [\"imagenet\"], got {value!r}; "
            f"{known}"
        )
    names = []
    for name in value:
        if not isinstance(name, str):
            raise ChoiceError(f"'datasets' holds {name!r}, which is not a dataset name; {known}")
        if name in names:
            raise ChoiceError(f"'datasets' names {name!r} twice; name each dataset once")
        names.append(name)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ChoiceError(f"unknown dataset(s) {', '.join(map(repr, unknown))}; {known}")
    return tuple(names)


def resolve_choice(
    user_options: Mapping | None,
    *,
    profiles: Sequence[Profile],
    models: Mapping[str, int],
    default_gpus: int = 0,
    max_gpus: int | None = None,
    datasets: Sequence[str] = (),
    allowed_images: Mapping[str, str] | str | None = None,
    default_image: str = "",
    templates: Sequence[str] = (),
) -> Choice:
    """Turn ``user_options`` into a :class:`Choice`, or raise :class:`ChoiceError`.

    `models` maps each GPU model present to how many GPUs of it exist;
    `max_gpus` is the per-user maximum (None: no limit beyond the machine);
    `datasets` names the datasets a user may mount (with any profile or count);
    `allowed_images` is the spawner's (:func:`~jupyter_gpu_meter.images.normalize_allowed`)
    and `default_image` its ``image`` (:mod:`~jupyter_gpu_meter.images`).
    `templates` the project templates' slugs a user may start with.
    """
    options = dict(user_options or {})
    if set(options) == {"user_options"} and isinstance(options["user_options"], Mapping):
        options = dict(options["user_options"])  # JupyterHub 6's {"user_options": {...}} body
    unknown = set(options) - set(OPTION_KEYS)
    if unknown:
        raise ChoiceError(
            f"unknown option(s) {', '.join(map(repr, sorted(unknown)))}; "
            f"allowed: {', '.join(OPTION_KEYS)}"
        )
    snapshot = _snapshot_id(options.pop("snapshot", ""))
    requested_image = options.pop("image", None)
    template = _template_slug(options.pop("template", ""), templates)
    chosen = parse_datasets(options.pop("datasets"), datasets) if "datasets" in options else ()
    choice = _resolve_gpus(options, profiles, models, default_gpus, max_gpus)
    profile = next((p for p in profiles if p.slug == choice.profile), None)
    if profile is not None and profile.datasets is not None:
        refused = [name for name in chosen if name not in profile.datasets]
        if refused:
            allowed = [name for name in datasets if name in profile.datasets]
            raise ChoiceError(
                f"profile {profile.slug!r} may not mount the dataset(s) "
                f"{', '.join(map(repr, refused))}; it allows: {', '.join(allowed) or 'none'}"
            )
    image = _image(requested_image, profile, allowed_images, default_image)
    return replace(
        choice,
        datasets=chosen,
        snapshot=snapshot,
        image=image.reference or None,
        image_name=image.name,
        template=template,
    )


def _image(requested, profile: Profile | None, allowed, default: str):
    """The :class:`~jupyter_gpu_meter.images.ImageChoice` of a start, or ChoiceError."""
    allowed, default = profile_images(
        profile.allowed_images if profile else None,
        profile.image if profile else None,
        allowed=normalize_allowed(allowed),
        image=default,
    )
    where = f"profile {profile.slug!r}" if profile and profile.allowed_images is not None else ""
    try:
        return resolve_image(requested, allowed=allowed, default=default, where=where)
    except ImageNotAllowed as e:
        raise ChoiceError(str(e)) from None


def _template_slug(value, templates: Sequence[str]) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or value not in templates:
        raise ChoiceError(
            f"unknown template {str(value)[:64]!r}; available: {', '.join(templates) or 'none'}"
        )
    return value


def _snapshot_id(value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value.strip()) > MAX_SNAPSHOT_ID:
        raise ChoiceError(
            f"'snapshot' is the id of one of your snapshots (text, at most {MAX_SNAPSHOT_ID} "
            f"characters), e.g. '20261130-060102-a1b2c3'; got {str(value)[:40]!r}"
        )
    return value.strip()


def _resolve_gpus(options, profiles, models, default_gpus, max_gpus) -> Choice:
    """The GPUs and profile part of the options (all but ``datasets``)."""
    limit = max(models.values(), default=0)
    if max_gpus is not None:
        limit = min(limit, max_gpus)
    by_slug = {profile.slug: profile for profile in profiles}

    if "profile" in options:
        if set(options) != {"profile"}:
            raise ChoiceError("choose either a 'profile' or 'gpus' (with 'gpu_model'), not both")
        slug = options["profile"]
        if slug not in by_slug:
            raise ChoiceError(
                f"unknown profile {slug!r}; available: {', '.join(by_slug) or 'none'}"
            )
        return _from_profile(by_slug[slug], models, max_gpus)

    if not options:
        default = next((p for p in profiles if p.default), profiles[0] if profiles else None)
        if default is not None:
            return _from_profile(default, models, max_gpus)
        options = {"gpus": default_gpus}

    model = options.get("gpu_model") or None
    if model is not None:
        if model not in models:
            raise ChoiceError(
                f"unknown GPU model {model!r}; available: {', '.join(models) or 'none'}"
            )
        limit = models[model] if max_gpus is None else min(models[model], max_gpus)
    count = _as_count(options.get("gpus", 1 if model else default_gpus), limit)
    return Choice(gpus=count, gpu_model=model if count else None)


def _from_profile(profile: Profile, models: Mapping[str, int], max_gpus: int | None) -> Choice:
    if profile.gpus and profile.gpu_model and profile.gpu_model not in models:
        raise ChoiceError(
            f"profile {profile.slug!r} needs {profile.gpu_model}, which this machine does not "
            f"have; available: {', '.join(models) or 'no GPUs'}"
        )
    if max_gpus is not None and profile.gpus > max_gpus:
        raise ChoiceError(
            f"profile {profile.slug!r} has {profile.gpus} GPUs, more than the {max_gpus} "
            "you may use"
        )
    return Choice(
        gpus=profile.gpus,
        gpu_model=profile.gpu_model if profile.gpus else None,
        profile=profile.slug,
        cpu_limit=profile.cpu_limit,
        mem_limit=profile.mem_limit,
        image=profile.image,
        ssh=profile.ssh,
    )
