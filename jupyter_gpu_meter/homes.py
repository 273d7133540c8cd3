"""Persistent homes: a Docker volume per user that outlives every server.

A notebook container is disposable (each run gets fresh GPUs, ``remove=True``);
the user's home is not. Each user gets one named Docker volume, mounted at the
notebook user's home by every one of their servers and kept across stops,
culls, budget stops, hub restarts and image changes. Only an admin removes it.

Naming (:func:`home_volume_name`) is pure. The Docker calls here are blocking
docker-py calls on a low-level ``APIClient``: callers run them off the event
loop (the spawner in its executor, the meter in a thread, the CLI as is).

Every volume this package makes carries labels (:func:`volume_labels`): its
kind (``home`` or ``snapshot``), its user and its hub. The meter finds the
volumes to measure and bill by those labels, and the spawner refuses to mount
a labelled volume of another user or another hub.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import docker.errors
from jupyterhub.traitlets import ByteSpecification
from traitlets import Bool, Dict, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from . import labels
from .clock import utcnow
from .container import host_path_problems
from .usage import parse_time
from .usage.dates import isoformat

#: on every volume this package makes: "home" or "snapshot"
VOLUME_KIND = labels.PREFIX + "volume"
HOME = "home"
SNAPSHOT = "snapshot"
#: on a snapshot: the home volume it was taken of
SNAPSHOT_OF = labels.PREFIX + "snapshot-of"
#: on every volume this package makes: when it made it. Docker's own ``CreatedAt``
#: of a local volume moves each time a container mounts the volume.
VOLUME_CREATED = labels.PREFIX + "volume-created"
#: on a snapshot: when it was taken (snapshots taken before VOLUME_CREATED have only this)
SNAPSHOT_CREATED = labels.PREFIX + "snapshot-created"

DEFAULT_TEMPLATE = "jupyter-gpu-meter-home-{username}"
DEFAULT_IMAGE = "jupyter-gpu-meter/notebook:latest"
#: the placeholders a volume name template may use
TEMPLATE_FIELDS = ("username", "hub_id")

#: what Docker accepts as a volume name
_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
#: longest volume name we make: the local driver makes a folder of it (255 bytes at most)
MAX_VOLUME_NAME = 200
#: characters kept as they are in a user name; every other one is escaped
_SAFE = frozenset(string.ascii_letters + string.digits + ".-")
_ESCAPE = "_"


class HomeError(RuntimeError):
    """A home volume that cannot be used; the message says why and what to do."""


def escape_name(name: str) -> str:
    """A user name as characters Docker allows in a volume name, one-to-one.

    Letters, digits, ``.`` and ``-`` stay; every other character (``_``
    included) becomes ``_`` and its UTF-8 bytes in lower-case hex:
    ``"ada_l@x"`` -> ``"ada_5fl_40x"``. Distinct names never meet.
    """
    return "".join(
        char if char in _SAFE else "".join(f"{_ESCAPE}{byte:02x}" for byte in char.encode())
        for char in name
    )


def check_template(template: str) -> str:
    """The template unchanged, or ValueError saying what a volume name template may hold."""
    fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    unknown = sorted({field for field in fields if field not in TEMPLATE_FIELDS})
    if unknown:
        raise ValueError(
            f"volume name template {template!r}: unknown placeholder(s) "
            f"{', '.join('{' + field + '}' for field in unknown)}; "
            f"allowed: {', '.join('{' + field + '}' for field in TEMPLATE_FIELDS)}"
        )
    if "username" not in fields:
        raise ValueError(
            f"volume name template {template!r} must contain {{username}}: "
            "without it every user would share one home"
        )
    sample = template.format(username="a", hub_id="hub")
    if not _VOLUME_NAME.match(sample):
        raise ValueError(
            f"volume name template {template!r} gives {sample!r}, which Docker refuses: "
            "a volume name starts with a letter or digit and holds only letters, digits, "
            "'_', '.' and '-'"
        )
    return template


def home_volume_name(template: str, username: str, hub_id: str = "") -> str:
    """The home volume's name for `username`, e.g. ``jupyter-gpu-meter-home-ada``.

    The user name is escaped (:func:`escape_name`). A name that would exceed
    :data:`MAX_VOLUME_NAME` keeps its start and ends with a hash of the whole
    user name, so long names stay distinct too.
    """
    name = template.format(username=escape_name(username), hub_id=escape_name(hub_id))
    if len(name) > MAX_VOLUME_NAME:
        digest = hashlib.sha256(username.encode()).hexdigest()[:16]
        name = f"{name[: MAX_VOLUME_NAME - len(digest) - 1]}-{digest}"
    return name


def volume_labels(
    kind: str, *, user: str, hub_id: str, created: datetime, **extra: str
) -> dict[str, str]:
    """The labels of a volume of this package: its kind, user, hub, when it is made
    (`created`), and `extra`."""
    return {
        VOLUME_KIND: kind,
        labels.USER: user,
        labels.HUB: hub_id,
        VOLUME_CREATED: isoformat(created),
        **extra,
    }


@dataclass(frozen=True)
class Volume:
    """A labelled volume as Docker lists it."""

    name: str
    kind: str
    user: str
    hub_id: str
    #: when it was made: its creation label, else Docker's ``CreatedAt`` (which moves
    #: each time a container mounts the volume)
    created_at: datetime | None
    labels: Mapping[str, str]
    #: when this package made it, from its label; None on a volume made before the label
    made_at: datetime | None = None

    @classmethod
    def from_docker(cls, info: Mapping) -> Volume:
        found = info.get("Labels") or {}
        made = parse_docker_time(found.get(VOLUME_CREATED) or found.get(SNAPSHOT_CREATED))
        return cls(
            name=info["Name"],
            kind=found.get(VOLUME_KIND, ""),
            user=found.get(labels.USER, ""),
            hub_id=found.get(labels.HUB, ""),
            created_at=made or parse_docker_time(info.get("CreatedAt")),
            labels=dict(found),
            made_at=made,
        )


def parse_docker_time(text: str | None) -> datetime | None:
    """A Docker timestamp ("2026-11-30T06:01:02Z", or with an offset) as aware UTC, or None
    (also for one that is not a time)."""
    try:
        return parse_time(text)
    except ValueError:
        return None


def inspect_volume(api, name: str) -> dict | None:
    """Docker's description of the volume `name`, or None if there is none. Blocking."""
    try:
        return api.inspect_volume(name)
    except docker.errors.NotFound:
        return None


def labelled_volumes(api, *, hub_id: str, kind: str | None = None, user: str | None = None):
    """This hub's volumes of `kind` (home, snapshot; None: both), of `user` (None: all)."""
    filters = [f"{VOLUME_KIND}={kind}" if kind else VOLUME_KIND, f"{labels.HUB}={hub_id}"]
    if user is not None:
        filters.append(f"{labels.USER}={user}")
    found = api.volumes(filters={"label": filters}).get("Volumes") or []
    volumes = [Volume.from_docker(info) for info in found]
    # Docker's label filter matches "key=value" exactly; check again for safety
    return sorted(
        (
            volume
            for volume in volumes
            if volume.hub_id == hub_id
            and (kind is None or volume.kind == kind)
            and (user is None or volume.user == user)
        ),
        key=lambda volume: volume.name,
    )


class HomeVolumes(LoggingConfigurable):
    """Persistent homes, configured once for the hub and the meter.

    Both the spawner (which mounts the home) and the meter (which measures
    and bills it, and takes snapshots) read this section of the shared
    ``jupyterhub_config.py``.
    """

    enabled = Bool(
        True,
        help="""
        Give each user a persistent home: a Docker volume mounted at
        ``mount_path`` by all of that user's servers, kept across stops. False:
        notebooks keep nothing when they stop (the container is removed).
        """,
    ).tag(config=True)

    name_template = Unicode(
        DEFAULT_TEMPLATE,
        help="""
        The home volume's name, e.g. ``"jupyter-gpu-meter-home-{username}"``.
        ``{username}`` (required) is the user name escaped for Docker
        (letters, digits, ``.`` and ``-`` kept, others as ``_`` + hex);
        ``{hub_id}`` is this hub's id. Names longer than 200 characters are
        shortened with a hash. Changing it gives every user a new, empty home:
        the old volumes stay until an admin removes them.
        """,
    ).tag(config=True)

    @validate("name_template")
    def _check_template(self, proposal):
        return check_template(proposal.value)

    driver = Unicode(
        "local",
        help="""
        The Docker volume driver new homes are made with, e.g. ``"local"``
        (the engine's disk, or NFS through ``driver_opts``) or a volume plugin's name.
        """,
    ).tag(config=True)

    driver_opts = Dict(
        value_trait=Unicode(),
        help="""
        Options for ``driver`` when a home is made; ``{username}`` (escaped
        as in ``name_template``) and ``{hub_id}`` are filled in. For NFS with
        the local driver: ``{"type": "nfs", "o": "addr=10.0.0.5,rw,nfsvers=4",
        "device": ":/export/homes/{username}"}`` (each user's folder must exist
        on the server). Empty: the driver's defaults. A ``device`` that is a
        system folder or the Docker engine's is refused.
        """,
    ).tag(config=True)

    @validate("driver_opts")
    def _check_driver_opts(self, proposal):
        options = {}
        for key, value in proposal.value.items():
            try:
                options[key] = value.format(username="a", hub_id="hub")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(
                    f"driver_opts[{key!r}] = {value!r}: bad placeholder ({e}); "
                    "allowed: {username}, {hub_id}"
                ) from None
        device = options.get("device", "")
        if device.startswith("/") and host_path_problems(device):
            raise ValueError(
                f"driver_opts device {proposal.value['device']!r} is a system folder or the "
                "Docker engine's: give homes a folder of their own, e.g. '/srv/homes/{username}'"
            )
        return proposal.value

    def volume_options(self, username: str, hub_id: str) -> dict[str, str]:
        """``driver_opts`` for `username`'s home, placeholders filled in."""
        return {
            key: value.format(username=escape_name(username), hub_id=escape_name(hub_id))
            for key, value in self.driver_opts.items()
        }

    mount_path = Unicode(
        "/home/jovyan",
        help="""
        Where the home is mounted in the notebook container: the notebook
        user's home, e.g. ``"/home/jovyan"`` (the shipped image's).
        """,
    ).tag(config=True)

    @validate("mount_path")
    def _check_mount_path(self, proposal):
        path = "/" + posixpath.normpath(proposal.value.strip()).lstrip("/")
        if not proposal.value.strip().startswith("/") or path == "/":
            raise ValueError(
                f"mount_path {proposal.value!r}: give an absolute folder other than '/', "
                "e.g. '/home/jovyan'"
            )
        return path

    size_warning = ByteSpecification(
        None,
        allow_none=True,
        help="""
        Warn (on the usage pages and in the meter's log) when a home grows
        beyond this size, e.g. ``"50G"``. None: no warning. Nothing is
        deleted or refused: storage is billed by use.
        """,
    ).tag(config=True)

    helper_image = Unicode(
        help="""
        The image of the short-lived containers that copy snapshots and
        measure or remove homes, e.g. ``"jupyter-gpu-meter/notebook:latest"``.
        It needs ``sh``, ``chown``, ``cp``, ``mv`` and ``rm``. (A new home is
        prepared with the server's own image, which needs ``sh``, ``cp`` and
        ``chown``.) Defaults to
        ``c.GPUDockerSpawner.image`` when the config sets it, else the shipped
        image. These containers have no network and only the volumes they work on.
        """,
    ).tag(config=True)

    @default("helper_image")
    def _helper_image_default(self):
        configured = self.config.get("GPUDockerSpawner", {}).get("image")
        if configured is None:
            configured = self.config.get("DockerSpawner", {}).get("image")
        return configured if isinstance(configured, str) and configured else DEFAULT_IMAGE

    def volume_name(self, username: str, hub_id: str) -> str:
        return home_volume_name(self.name_template, username, hub_id)


# --- helper containers ----------------------------------------------------------

#: on every helper container: what it does ("prepare", "snapshot", "restore", ...)
HELPER = labels.PREFIX + "helper"


def helper_name(purpose: str, volume: str) -> str:
    """The helper container's name: one operation per volume at a time (Docker refuses a second)."""
    return f"jgm-{purpose}-{volume}"[:250]


class HomeBusy(HomeError):
    """Another operation on the same volume is running."""


class HelperFailed(HomeError):
    """A helper container that exited non-zero; the message holds its output."""


def run_helper(
    api,
    *,
    image: str,
    purpose: str,
    volume: str,
    script: str,
    mounts: Mapping[str, str],
    user: str = "0:0",
    cap_add=("CHOWN", "DAC_OVERRIDE", "FOWNER"),
    timeout: float = 3600,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run `script` with ``sh -ec`` in a short-lived container; its output or :class:`HelperFailed`.

    `mounts` maps a volume name to ``"/path"`` (read-write) or
    ``"/path:ro"``. The container has no network, every capability but
    `cap_add` dropped, no new privileges, and is removed afterwards. Its name
    (:func:`helper_name`) makes a second operation on the same `volume` fail
    with :class:`HomeBusy` while the first runs.
    """
    name = helper_name(purpose, volume)
    # nocopy: Docker must not fill an empty volume from the helper image's folder
    binds = [
        f"{source}:{target},nocopy" if ":" in target else f"{source}:{target}:rw,nocopy"
        for source, target in mounts.items()
    ]
    host_config = api.create_host_config(
        binds=binds,
        network_mode="none",
        cap_drop=["ALL"],
        cap_add=list(cap_add),
        security_opt=["no-new-privileges:true"],
    )
    try:
        container = api.create_container(
            image,
            command=["sh", "-ec", script],
            name=name,
            user=user,
            entrypoint=[],
            environment=dict(env or {}),
            labels={HELPER: purpose, VOLUME_KIND + "-target": volume},
            host_config=host_config,
            network_disabled=True,
        )
    except docker.errors.APIError as e:
        if e.response is not None and e.response.status_code == 409:
            raise HomeBusy(f"{volume}: another operation ({purpose}) on it is running") from None
        if e.response is not None and e.response.status_code == 404:
            raise HomeError(
                f"helper image {image!r} not found: build it, or set "
                "c.HomeVolumes.helper_image to an image with sh, cp, mv and chown"
            ) from None
        raise
    try:
        api.start(container)
        result = api.wait(container, timeout=timeout)
        output = api.logs(container, stdout=True, stderr=True).decode(errors="replace")
        if result.get("StatusCode") != 0:
            raise HelperFailed(
                f"{purpose} of {volume} failed (exit {result.get('StatusCode')}): "
                f"{output.strip()[-2000:]}"
            )
        return output
    finally:
        try:
            api.remove_container(container, force=True)
        except docker.errors.NotFound:
            pass


def ensure_home(
    api,
    name: str,
    *,
    user: str,
    hub_id: str,
    owner: str,
    image: str,
    mount_path: str,
    driver: str = "local",
    driver_opts: Mapping[str, str] | None = None,
    clock=utcnow,
) -> bool:
    """Make sure `user`'s home volume `name` exists and belongs to them; True if it was created.

    A new volume gets labels, a copy of what `image` holds at `mount_path`
    (the image's own home: ``.bashrc``, ``.profile``; nothing if it has
    none), and everything in it is given to `owner` (``uid:gid``, e.g.
    ``"1000:100"``), so a notebook that runs as that user can write to it.
    This is done by a helper container of `image` (it needs ``sh``, ``cp``
    and ``chown``). The notebook mounts the home with ``nocopy``: Docker's
    own copy on first mount would give an image without that folder a
    root-owned home. :class:`HomeError` if a volume of that name belongs to
    another user or hub (a template without ``{hub_id}`` shared by two hubs on
    one engine): never mount someone else's files.
    """
    info = inspect_volume(api, name)
    if info is not None:
        check_owner(Volume.from_docker(info), user=user, hub_id=hub_id)
        return False
    api.create_volume(
        name=name,
        driver=driver,
        driver_opts=dict(driver_opts or {}) or None,
        labels=volume_labels(HOME, user=user, hub_id=hub_id, created=clock()),
    )
    try:
        run_helper(
            api,
            image=image,
            purpose="prepare",
            volume=name,
            script=(
                'if [ -d "$SKELETON" ]; then cp -a "$SKELETON/." /home-volume/; fi\n'
                'chown -R "$OWNER" /home-volume\nchmod 0755 /home-volume'
            ),
            mounts={name: "/home-volume"},
            env={"OWNER": owner, "SKELETON": mount_path},
            timeout=120,
        )
    except HomeBusy:
        raise  # another start of this user's is preparing the same new home
    except Exception:
        # a half-made home would be mounted root-owned next time: make it again then
        try:
            api.remove_volume(name)
        except docker.errors.APIError:
            pass
        raise
    return True


def check_owner(volume: Volume, *, user: str, hub_id: str) -> None:
    """:class:`HomeError` unless `volume` is `user`'s home on hub `hub_id`."""
    if volume.kind == HOME and volume.user == user and volume.hub_id == hub_id:
        return
    if not volume.kind:
        raise HomeError(
            f"a Docker volume named {volume.name} exists but was not made as a home "
            "(no jupyter-gpu-meter labels): rename or remove it, or change "
            "c.HomeVolumes.name_template"
        )
    raise HomeError(
        f"the volume {volume.name} is the {volume.kind} of user {volume.user!r} on hub "
        f"{volume.hub_id!r}, not this user's home here: give each hub its own names with "
        "'{hub_id}' in c.HomeVolumes.name_template"
    )
