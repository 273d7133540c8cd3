"""Which image a server runs: DockerSpawner's ``allowed_images``, per profile too. Pure.

``allowed_images`` keeps DockerSpawner 14's meaning: a dict display name ->
image reference, a list (each reference its own name), ``"*"`` (any
reference, named by itself) or a callable returning one of them; empty (the
default): users cannot choose, every server runs ``image``. A profile may
carry its own ``allowed_images`` (replacing the spawner's for servers of that
profile) and its own ``image`` (its default).

A user names an image by its display name (``{"image": "PyTorch 2.9 / CUDA
12.8"}``), never by a reference of their own unless the admin allowed ``"*"``.
What they chose travels as :class:`ImageChoice`: the reference Docker runs and
the name the container's label, the ledger and the pages show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: ``allowed_images = "*"``: any image reference (DockerSpawner 13+)
ANY = "*"

#: the forms ``allowed_images`` takes, for error messages
FORMS = (
    "a dict {display name: image}, e.g. {'PyTorch 2.9 / CUDA 12.8': "
    "'pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime'}, a list of images, "
    "'*' (any image) or a callable returning one of them"
)


class ImageNotAllowed(ValueError):
    """A user's image choice that cannot be served; the message lists what is allowed."""


@dataclass(frozen=True)
class ImageChoice:
    """The image a server runs: its display `name` and the `reference` Docker pulls/runs."""

    name: str
    reference: str


def normalize_allowed(value, where: str = "allowed_images") -> dict[str, str] | str:
    """``allowed_images`` (already called, if it was a callable) as a dict or ``"*"``.

    None -> ``{}``; a list -> ``{image: image}``; a dict is checked (text keys
    and values, none empty). ValueError naming `where` and the accepted forms.
    """
    if value is None:
        return {}
    if isinstance(value, str):
        if value != ANY:
            raise ValueError(
                f"{where}: '*' (all images) is the only accepted text, got {value!r}; "
                f"use a list, [{value!r}], to allow just that image"
            )
        return ANY
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)):
        pairs = [(item, item) for item in value]
    else:
        raise ValueError(f"{where} must be {FORMS}; got {type(value).__name__} {value!r}")
    for name, reference in pairs:
        if not (isinstance(name, str) and name.strip()):
            raise ValueError(f"{where}: the display name {name!r} must be non-empty text")
        if not (isinstance(reference, str) and reference.strip()):
            raise ValueError(
                f"{where}: the image of {name!r} must be a non-empty image reference, "
                f"e.g. 'pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime', got {reference!r}"
            )
    return dict(pairs)


def display_name(reference: str, allowed: Mapping[str, str] | str) -> str:
    """The name `reference` has in `allowed` (the first that maps to it), else itself."""
    if isinstance(allowed, Mapping):
        for name, image in allowed.items():
            if image == reference:
                return name
    return reference


def offered(allowed: Mapping[str, str] | str) -> list[str]:
    """The names a spawn form offers: only when there is a choice (more than one), as
    DockerSpawner's own form does; none for ``"*"`` (the API takes any reference)."""
    if isinstance(allowed, Mapping) and len(allowed) > 1:
        return list(allowed)
    return []


def allowed_text(allowed: Mapping[str, str] | str) -> str:
    if allowed == ANY:
        return "any image reference"
    return ", ".join(allowed) or "none"


def resolve_image(
    requested, *, allowed: Mapping[str, str] | str, default: str, where: str = ""
) -> ImageChoice:
    """The image a start runs: `requested` (a display name, or None/"" for `default`).

    `allowed` is :func:`normalize_allowed`'s; `default` the reference used when
    the user names none (``image``, or the profile's). :class:`ImageNotAllowed`
    for a name that is not allowed, listing the names that are; `where` (e.g.
    "profile 'gpu-1'") says whose list it was.
    """
    if requested is None or requested == "":
        return ImageChoice(display_name(default, allowed), default)
    whose = f" for {where}" if where else ""
    if not isinstance(requested, str):
        raise ImageNotAllowed(
            f"'image' is the name of an allowed image, as text; got {requested!r}; "
            f"allowed{whose}: {allowed_text(allowed)}"
        )
    if allowed == ANY:
        return ImageChoice(requested, requested)
    if not allowed:
        raise ImageNotAllowed(
            f"choosing an image is not allowed{whose}: it runs {display_name(default, allowed)}"
        )
    if requested not in allowed:
        shown = repr(requested[:80]) + ("…" if len(requested) > 80 else "")
        raise ImageNotAllowed(f"unknown image {shown}; allowed{whose}: {allowed_text(allowed)}")
    return ImageChoice(requested, allowed[requested])


def profile_images(
    profile_allowed: Mapping[str, str] | str | None,
    profile_image: str | None,
    *,
    allowed: Mapping[str, str] | str,
    image: str,
) -> tuple[Mapping[str, str] | str, str]:
    """(allowed, default reference) for servers of one profile.

    A profile's own ``allowed_images`` (None: it has none) replaces the
    spawner's. Its default is the profile's ``image``; else the first of its
    own ``allowed_images``; else the spawner's ``image``.
    """
    own = profile_allowed is not None
    chosen = profile_allowed if own else allowed
    if profile_image:
        return chosen, profile_image
    if own and isinstance(chosen, Mapping) and chosen:
        return chosen, next(iter(chosen.values()))
    return chosen, image


def offered_per_profile(profiles: Sequence, allowed, image: str) -> dict[str, list[str]]:
    """Profile slug -> the image names its spawn form entry offers (see :func:`offered`)."""
    return {
        profile.slug: offered(
            profile_images(profile.allowed_images, profile.image, allowed=allowed, image=image)[0]
        )
        for profile in profiles
    }
