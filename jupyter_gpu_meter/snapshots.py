"""Snapshots of homes: a Docker volume per snapshot, and an all-or-nothing restore.

A snapshot is a labelled Docker volume (:func:`homes.volume_labels` with kind
``snapshot``, :data:`homes.SNAPSHOT_OF`, its id, creation time and an
optional label). It holds ``home/``, a copy of the home made with ``cp -a``
(modes, owners, times, symlinks, hard links kept), and ``complete``, written
last: a snapshot without it was interrupted and is never restored.

A snapshot taken while a server runs is copied file by file while the
notebook may be writing: each file is as it was when it was read, a file
being written at that moment may be caught half-written, and files created
or removed meanwhile may be missing. Stop the server (or let writes finish)
for a copy of one moment.

Restore is all-or-nothing (:func:`restore_snapshot`). Everything happens in
the home volume itself, so the commit is one ``rename``:

1. refuse while any container mounts the home (a server, another operation);
2. create the marker volume ``<home>.restoring``: "a restore may be
   unfinished here" (one cheap ``inspect`` tells a spawner there is nothing
   to do when it is absent);
3. copy the snapshot into ``.jgm-restore.partial.<token>`` in the home,
   compare names, types, modes, owners, sizes and link targets with the
   snapshot, rename it ``.jgm-restore.ready.<token>``;
4. check again that no container mounts the home, then commit: rename
   ``.jgm-restore.ready.<token>`` to ``.jgm-restore.committed`` (atomic);
5. swap: move the home's other entries into ``.jgm-trash``, rename the
   staging folder ``.jgm-restore.swapping``, move its entries into the home,
   remove it and the trash; each step can be run again;
6. remove the marker.

:func:`finish_interrupted_restore` (run before any operation on a home and
by the spawner before a server starts) rolls a committed restore forward
and removes an uncommitted one, so a crash anywhere leaves either the old
home or the snapshot, never a mix. The names ``.jgm-restore.*`` and
``.jgm-trash`` at the top of a home are reserved: snapshots leave them out.

Everything here blocks (docker-py's ``APIClient`` and helper containers that
copy): callers run it off the event loop. Naming and label checks are pure.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import docker.errors

from . import homes, labels
from .clock import as_utc, utcnow
from .usage import isoformat

log = logging.getLogger(__name__)

#: on a snapshot: its id (unique among its user's snapshots), e.g. "20261130-060102-a1b2c3"
SNAPSHOT_ID = labels.PREFIX + "snapshot-id"
#: on a snapshot: when it was taken (ISO 8601 UTC)
SNAPSHOT_CREATED = labels.PREFIX + "snapshot-created"
#: on a snapshot: the user's short label, may be empty
SNAPSHOT_LABEL = labels.PREFIX + "snapshot-label"
#: on a restore marker: the home being restored, and the snapshot volume it comes from
RESTORING = labels.PREFIX + "restoring"
RESTORE_FROM = labels.PREFIX + "restore-from"
#: on helper containers: the volume they work on (set by homes.run_helper)
HELPER_TARGET = homes.VOLUME_KIND + "-target"

#: what a snapshot id looks like
ID_PATTERN = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
#: the longest label a user may give a snapshot
MAX_LABEL = 64
_LABEL_PUNCTUATION = frozenset(" .,:;_-()#+@/'")
#: container states in which a container uses the volumes it mounts
IN_USE_STATES = ("created", "running", "restarting", "paused", "removing")
#: a helper container left "created" longer than this belongs to a process that died
STALE_CREATED_S = 60

TAKE = "snapshot"
RESTORE = "restore"
#: capabilities a copy needs as root: owners, modes, times, files only their owner reads
COPY_CAPS = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID")


class SnapshotError(homes.HomeError):
    """A snapshot operation that cannot be done; the message says why and what to do."""


class SnapshotNotFound(SnapshotError):
    """No such snapshot (of this user)."""


class NoHome(SnapshotError):
    """The user has no home volume (yet)."""


class HomeInUse(homes.HomeBusy):
    """A container mounts the home: a server, or another operation on it."""


# --- names and labels (pure) ---------------------------------------------------------


def new_snapshot_id(now: datetime, token: str | None = None) -> str:
    """``20261130-060102-a1b2c3``: the UTC time and 6 random hex digits (sortable, unique)."""
    token = token if token is not None else secrets.token_hex(3)
    return f"{as_utc(now):%Y%m%d-%H%M%S}-{token}"


def _fit(name: str, suffix: str) -> str:
    """`name` + `suffix`, `name` shortened (with a hash of it) to fit MAX_VOLUME_NAME."""
    if len(name) + len(suffix) <= homes.MAX_VOLUME_NAME:
        return name + suffix
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    keep = homes.MAX_VOLUME_NAME - len(suffix) - len(digest) - 1
    return f"{name[:keep]}-{digest}{suffix}"


def snapshot_volume_name(home: str, snapshot_id: str) -> str:
    """The snapshot's volume: ``<home>.snapshot-<id>``, the home's part shortened if needed."""
    return _fit(home, f".snapshot-{snapshot_id}")


def marker_volume_name(home: str) -> str:
    """The restore marker of `home`: ``<home>.restoring``."""
    return _fit(home, ".restoring")


def check_label(label) -> str:
    """A snapshot's label, stripped; ValueError saying what a label may hold.

    At most 64 characters: letters and digits of any script, spaces and
    ``. , : ; _ - ( ) # + @ / '``. Empty is allowed (no label).
    """
    if label is None:
        return ""
    if not isinstance(label, str):
        raise ValueError(f"a snapshot label is text, got {type(label).__name__}")
    text = unicodedata.normalize("NFC", label).strip()
    if len(text) > MAX_LABEL:
        raise ValueError(f"a snapshot label has at most {MAX_LABEL} characters, got {len(text)}")
    bad = sorted({char for char in text if not (char.isalnum() or char in _LABEL_PUNCTUATION)})
    if bad:
        shown = ", ".join(repr(char) for char in bad[:5])
        raise ValueError(
            f"a snapshot label may hold letters, digits, spaces and . , : ; _ - ( ) # + @ / '; "
            f"not {shown}"
        )
    return text


@dataclass(frozen=True)
class Snapshot:
    """A snapshot as its volume's labels describe it."""

    id: str
    volume: str
    user: str
    home: str
    created_at: datetime | None
    label: str = ""
    #: bytes in the copy, when known (from the copy that made it; the meter measures it too)
    size_bytes: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_volume(cls, volume: homes.Volume) -> Snapshot:
        found = volume.labels
        created = homes.parse_docker_time(found.get(SNAPSHOT_CREATED)) or volume.created_at
        return cls(
            id=found.get(SNAPSHOT_ID, volume.name),
            volume=volume.name,
            user=volume.user,
            home=found.get(homes.SNAPSHOT_OF, ""),
            created_at=created,
            label=found.get(SNAPSHOT_LABEL, ""),
        )

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "user": self.user,
            "label": self.label,
            "created_at": isoformat(self.created_at) if self.created_at else None,
            "size_bytes": self.size_bytes,
            "volume": self.volume,
            "home": self.home,
        }


# --- finding ---------------------------------------------------------------------------


def list_snapshots(api, *, hub_id: str, user: str | None = None) -> list[Snapshot]:
    """This hub's snapshots of `user` (None: everyone's), newest first."""
    volumes = homes.labelled_volumes(api, hub_id=hub_id, kind=homes.SNAPSHOT, user=user)
    found = [Snapshot.from_volume(volume) for volume in volumes]
    return sorted(found, key=lambda s: (s.created_at is not None, s.created_at, s.id), reverse=True)


def find_snapshot(api, snapshot_id: str, *, hub_id: str, user: str) -> Snapshot:
    """`user`'s snapshot `snapshot_id`, or :class:`SnapshotNotFound` listing theirs."""
    snapshots = list_snapshots(api, hub_id=hub_id, user=user)
    for snapshot in snapshots:
        if snapshot.id == snapshot_id:
            return snapshot
    raise SnapshotNotFound(not_found_message(snapshot_id, user, [s.id for s in snapshots]))


def not_found_message(snapshot_id: str, user: str, ids: list[str]) -> str:
    shown = repr(snapshot_id[:40]) + ("…" if len(snapshot_id) > 40 else "")
    if not ids:
        return f"{user} has no snapshot {shown}: {user} has no snapshots"
    return f"{user} has no snapshot {shown}; {user}'s snapshots: {', '.join(ids)}"


def containers_using(api, volume: str) -> list[dict]:
    """The containers that mount `volume` and are running or about to (created, paused, ...)."""
    found = api.containers(all=True, filters={"volume": volume})
    using = []
    for container in found:
        if container.get("State") not in IN_USE_STATES:
            continue
        mounts = container.get("Mounts") or []
        if mounts and not any(mount.get("Name") == volume for mount in mounts):
            continue  # Docker's filter also matches a mount's destination path
        using.append(container)
    return using


def _describe(container: dict) -> str:
    found = container.get("Labels") or {}
    name = (container.get("Names") or ["?"])[0].lstrip("/")
    if homes.HELPER in found:
        return f"another operation on it ({found[homes.HELPER]}, container {name})"
    if labels.USER in found:
        server = found.get(labels.SERVER) or "default"
        return f"{found[labels.USER]}'s server {server!r} (container {name}, {container['State']})"
    return f"container {name} ({container['State']})"


def check_not_in_use(api, home: str) -> None:
    """:class:`HomeInUse` (with who uses it) if any container mounts `home`."""
    using = containers_using(api, home)
    if using:
        raise HomeInUse(
            f"the home {home} is in use by {'; '.join(_describe(c) for c in using)}: "
            "stop the server first (or wait for the operation to end), then try again"
        )


def _running_helpers(api, volume: str, purpose: str | None = None) -> list[dict]:
    """Helper containers at work on `volume` now (of `purpose`, None: any)."""
    found = api.containers(all=True, filters={"label": [f"{HELPER_TARGET}={volume}"]})
    return [
        c
        for c in found
        if c.get("State") in IN_USE_STATES
        and (purpose is None or (c.get("Labels") or {}).get(homes.HELPER) == purpose)
    ]


def clear_stale_helpers(api, volume: str, *, clock=time.time) -> None:
    """Remove helper containers of `volume` left behind by a process that died.

    Exited ones, and ones created but never started for over a minute. A
    running one is at work (its copy goes on even if its caller died): kept.
    """
    found = api.containers(all=True, filters={"label": [f"{HELPER_TARGET}={volume}"]})
    for container in found:
        state = container.get("State")
        stale = state in ("exited", "dead") or (
            state == "created" and clock() - container.get("Created", 0) > STALE_CREATED_S
        )
        if stale:
            try:
                api.remove_container(container["Id"], force=True)
            except docker.errors.NotFound:
                pass


def _helper(api, *, image, purpose, volume, script, mounts, env=None, timeout=3600):
    clear_stale_helpers(api, volume)
    return homes.run_helper(
        api,
        image=image,
        purpose=purpose,
        volume=volume,
        script=script,
        mounts=mounts,
        cap_add=COPY_CAPS,
        env=env,
        timeout=timeout,
    )


# --- the helpers' scripts (sh -ec, GNU coreutils and findutils) ----------------------

#: every top-level entry of "$dir", hidden ones too, as "$entry" (the loop's body follows)
_EACH_ENTRY = """for entry in "$dir"/* "$dir"/.[!.]* "$dir"/..?*; do
  [ -e "$entry" ] || [ -L "$entry" ] || continue"""
#: skip the restore's own folders at the top of a home
_SKIP_RESERVED = """  case "${entry##*/}" in .jgm-restore.*|.jgm-trash) continue ;; esac"""

TAKE_SCRIPT = f"""
src=/home-volume; dst=/snapshot/home
mkdir "$dst"
: > /tmp/errors
dir=$src
set --
{_EACH_ENTRY}
{_SKIP_RESERVED}
  set -- "$@" "$entry"
done
# one cp for all: hard links between entries stay links
if [ $# -gt 0 ]; then cp -a -- "$@" "$dst/" 2>>/tmp/errors || true; fi
# a running notebook may remove a file between the listing and its copy: that is no error
if grep -v 'No such file or directory' /tmp/errors >&2; then exit 3; fi
chown --reference="$src" "$dst"; chmod --reference="$src" "$dst"; touch -r "$src" "$dst"
size=$(du -sb "$dst" | cut -f1)
echo "$size" > /snapshot/complete
echo "size=$size"
"""

#: names, types, modes, owners, sizes (not of folders) and link targets of the tree in "$1"
_MANIFEST = """manifest() {
  (cd "$1" && { find . ! -type d -printf '%y %m %U:%G %s %p -> %l\\0'
                find . -type d -printf '%y %m %U:%G %p\\0'; } | sort -z)
}"""

STAGE_SCRIPT = f"""
home=/home-volume; src=/snapshot/home
if [ ! -f /snapshot/complete ] || [ ! -d "$src" ]; then
  echo "the snapshot is incomplete (taking it was interrupted): delete it" >&2; exit 4
fi
{_MANIFEST}
rm -rf "$home"/.jgm-restore.partial.* "$home"/.jgm-restore.ready.*
stage="$home/.jgm-restore.partial.$TOKEN"
mkdir "$stage"
cp -a "$src/." "$stage/"
manifest "$src" > /tmp/expected
manifest "$stage" > /tmp/copied
if ! cmp -s /tmp/expected /tmp/copied; then
  echo "the copy in the home differs from the snapshot" >&2; exit 5
fi
mv "$stage" "$home/.jgm-restore.ready.$TOKEN"
"""

#: roll a committed restore forward, remove an uncommitted one; safe to run again at any point
FINISH_SCRIPT = """
home=/home-volume
if [ -d "$home/.jgm-restore.committed" ]; then
  mkdir -p "$home/.jgm-trash"
  dir=$home
  for entry in "$dir"/* "$dir"/.[!.]* "$dir"/..?*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    case "${entry##*/}" in .jgm-restore.*|.jgm-trash) continue ;; esac
    mv -- "$entry" "$home/.jgm-trash/"
  done
  mv "$home/.jgm-restore.committed" "$home/.jgm-restore.swapping"
fi
if [ -d "$home/.jgm-restore.swapping" ]; then
  dir="$home/.jgm-restore.swapping"
  for entry in "$dir"/* "$dir"/.[!.]* "$dir"/..?*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    mv -- "$entry" "$home/"
  done
  chown --reference="$dir" "$home"; chmod --reference="$dir" "$home"; touch -r "$dir" "$home"
  rmdir "$dir"
  echo "rolled forward"
fi
rm -rf "$home/.jgm-trash" "$home"/.jgm-restore.partial.* "$home"/.jgm-restore.ready.*
"""

COMMIT_SCRIPT = (
    """
home=/home-volume
if [ ! -d "$home/.jgm-restore.ready.$TOKEN" ]; then
  echo "the restore's copy in the home is gone (another operation removed it): nothing changed" >&2
  exit 6
fi
mv "$home/.jgm-restore.ready.$TOKEN" "$home/.jgm-restore.committed"
"""
    + FINISH_SCRIPT
)


# --- operations ------------------------------------------------------------------------


def take_snapshot(
    api,
    home: str,
    *,
    user: str,
    hub_id: str,
    helper_image: str,
    label: str = "",
    clock=utcnow,
    timeout: float = 6 * 3600,
    make_id=new_snapshot_id,
) -> Snapshot:
    """Copy `user`'s home volume `home` into a new snapshot volume; the :class:`Snapshot`.

    The server may run meanwhile (see the module's note on consistency). A
    copy that fails or is interrupted removes its volume; one whose caller
    died leaves a volume without ``complete``, which restore refuses.
    """
    label = check_label(label)
    info = homes.inspect_volume(api, home)
    if info is None:
        raise NoHome(f"{user} has no home volume {home} yet: it is made when a server first starts")
    homes.check_owner(homes.Volume.from_docker(info), user=user, hub_id=hub_id)
    finish_interrupted_restore(api, home, helper_image=helper_image)
    now = as_utc(clock())
    snapshot_id = make_id(now)
    name = snapshot_volume_name(home, snapshot_id)
    if homes.inspect_volume(api, name) is not None:  # Docker would hand back the existing one
        raise SnapshotError(f"a volume named {name} exists already; try again")
    volume_labels = homes.volume_labels(
        homes.SNAPSHOT,
        user=user,
        hub_id=hub_id,
        **{
            homes.SNAPSHOT_OF: home,
            SNAPSHOT_ID: snapshot_id,
            SNAPSHOT_CREATED: isoformat(now),
            SNAPSHOT_LABEL: label,
        },
    )
    api.create_volume(name=name, labels=volume_labels)
    try:
        output = _helper(
            api,
            image=helper_image,
            purpose=TAKE,
            volume=home,
            script=TAKE_SCRIPT,
            mounts={home: "/home-volume:ro", name: "/snapshot"},
            timeout=timeout,
        )
    except BaseException:
        _remove_volume_quietly(api, name)
        raise
    size = re.search(r"^size=(\d+)$", output, re.M)
    volume = homes.Volume.from_docker(api.inspect_volume(name))
    snapshot = Snapshot.from_volume(volume)
    return Snapshot(**{**snapshot.__dict__, "size_bytes": int(size.group(1)) if size else None})


def _remove_volume_quietly(api, name: str) -> None:
    try:
        api.remove_volume(name, force=True)
    except docker.errors.APIError:
        pass


def delete_snapshot(api, snapshot: Snapshot) -> None:
    """Remove the snapshot's volume; :class:`HomeInUse` while a restore copies from it."""
    try:
        api.remove_volume(snapshot.volume)
    except docker.errors.NotFound:
        return
    except docker.errors.APIError as e:
        if e.response is not None and e.response.status_code == 409:
            raise HomeInUse(
                f"snapshot {snapshot.id} is in use (a restore is copying from it): "
                "try again when it is done"
            ) from None
        raise


def restore_snapshot(
    api,
    snapshot: Snapshot,
    home: str,
    *,
    user: str,
    hub_id: str,
    helper_image: str,
    timeout: float = 6 * 3600,
) -> None:
    """Replace the home's content with the snapshot's, all or nothing (see the module's notes).

    :class:`HomeInUse` while a server (or another operation) mounts the home;
    :class:`~homes.HelperFailed` if the copy fails, the home then unchanged;
    :class:`NoHome` without a home volume (the spawner makes it first).
    """
    info = homes.inspect_volume(api, home)
    if info is None:
        raise NoHome(
            f"{user} has no home volume {home}: start a server from the snapshot instead "
            "(the home is made first), or start and stop one, then restore"
        )
    homes.check_owner(homes.Volume.from_docker(info), user=user, hub_id=hub_id)
    if snapshot.user != user:
        raise SnapshotNotFound(f"snapshot {snapshot.id} is not {user}'s")
    finish_interrupted_restore(api, home, helper_image=helper_image)
    check_not_in_use(api, home)
    marker = marker_volume_name(home)
    api.create_volume(
        name=marker,
        labels={
            labels.USER: user,
            labels.HUB: hub_id,
            RESTORING: home,
            RESTORE_FROM: snapshot.volume,
        },
    )
    token = secrets.token_hex(8)
    try:
        _helper(
            api,
            image=helper_image,
            purpose=RESTORE,
            volume=home,
            script=STAGE_SCRIPT,
            mounts={snapshot.volume: "/snapshot:ro", home: "/home-volume"},
            env={"TOKEN": token},
            timeout=timeout,
        )
        check_not_in_use(api, home)  # a server started meanwhile: do not swap under it
        _helper(
            api,
            image=helper_image,
            purpose=RESTORE,
            volume=home,
            script=COMMIT_SCRIPT,
            mounts={home: "/home-volume"},
            env={"TOKEN": token},
            timeout=timeout,
        )
    except BaseException:
        # before the commit: the copy goes, the home stays; after it: the swap is finished
        try:
            finish_interrupted_restore(api, home, helper_image=helper_image)
        except Exception:  # the marker stays: the next operation or start finishes it
            log.exception("Finishing the interrupted restore of %s failed", home)
        raise
    _remove_volume_quietly(api, marker)


def finish_interrupted_restore(api, home_volume: str, *, helper_image: str) -> str | None:
    """Finish what an interrupted restore of `home_volume` left; what was done, or None.

    Without the marker volume there is nothing to do (one ``inspect``). With
    it: a committed restore is rolled forward, an uncommitted copy removed,
    and the marker removed. :class:`~homes.HomeBusy` ("a restore of … is in
    progress") while a restore's helper container is at work on the home.
    """
    marker = marker_volume_name(home_volume)
    if homes.inspect_volume(api, marker) is None:
        return None
    if _running_helpers(api, home_volume, RESTORE):
        raise homes.HomeBusy(
            f"a restore of the home {home_volume} is in progress: try again when it is done"
        )
    if homes.inspect_volume(api, home_volume) is None:
        _remove_volume_quietly(api, marker)
        return "marker removed (no home)"
    output = _helper(
        api,
        image=helper_image,
        purpose=RESTORE,
        volume=home_volume,
        script=FINISH_SCRIPT,
        mounts={home_volume: "/home-volume"},
        timeout=3600,
    )
    _remove_volume_quietly(api, marker)
    return "rolled forward" if "rolled forward" in output else "rolled back"


# --- homes, for admins -----------------------------------------------------------------


@dataclass(frozen=True)
class Home:
    """A user's home volume, as admins list them."""

    user: str
    volume: str
    created_at: datetime | None
    snapshots: int
    in_use: bool

    def to_json(self) -> dict:
        return {
            "user": self.user,
            "volume": self.volume,
            "created_at": isoformat(self.created_at) if self.created_at else None,
            "snapshots": self.snapshots,
            "in_use": self.in_use,
        }


def list_homes(api, *, hub_id: str) -> list[Home]:
    """Every home volume of this hub, by user name."""
    snapshots = list_snapshots(api, hub_id=hub_id)
    used = {
        mount.get("Name")
        for container in api.containers(all=True)
        if container.get("State") in IN_USE_STATES
        for mount in container.get("Mounts") or []
    }
    return sorted(
        (
            Home(
                user=volume.user,
                volume=volume.name,
                created_at=volume.created_at,
                snapshots=sum(1 for s in snapshots if s.user == volume.user),
                in_use=volume.name in used,
            )
            for volume in homes.labelled_volumes(api, hub_id=hub_id, kind=homes.HOME)
        ),
        key=lambda home: home.user,
    )


def find_home(api, user: str, *, hub_id: str) -> homes.Volume:
    """`user`'s home volume on this hub (by its labels), or :class:`NoHome`."""
    found = homes.labelled_volumes(api, hub_id=hub_id, kind=homes.HOME, user=user)
    if not found:
        raise NoHome(f"{user} has no home on this hub")
    return found[0]


def remove_home(api, user: str, *, hub_id: str, with_snapshots: bool = False) -> dict:
    """Remove `user`'s home volume(s) (and with `with_snapshots` their snapshots).

    :class:`HomeInUse` while a container mounts it (stop the server first);
    :class:`NoHome` if there is none. Returns what was removed.
    """
    found = homes.labelled_volumes(api, hub_id=hub_id, kind=homes.HOME, user=user)
    if not found:
        raise NoHome(f"{user} has no home on this hub")
    for volume in found:
        check_not_in_use(api, volume.name)
    removed = {"user": user, "volumes": [], "snapshots": []}
    for volume in found:
        try:
            api.remove_volume(volume.name)
        except docker.errors.APIError as e:
            if e.response is not None and e.response.status_code == 409:
                raise HomeInUse(
                    f"Docker refuses to remove {volume.name}: a container (maybe a stopped "
                    f"one) still refers to it: {e.explanation}"
                ) from None
            raise
        _remove_volume_quietly(api, marker_volume_name(volume.name))
        removed["volumes"].append(volume.name)
    if with_snapshots:
        for snapshot in list_snapshots(api, hub_id=hub_id, user=user):
            delete_snapshot(api, snapshot)
            removed["snapshots"].append(snapshot.id)
    return removed
