"""Restoring a snapshot into a home, all or nothing, and finishing an interrupted restore.

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
"""

from __future__ import annotations

import logging
import secrets

from .. import homes, labels
from .names import (
    RESTORE,
    RESTORE_FROM,
    RESTORING,
    NoHome,
    Snapshot,
    SnapshotNotFound,
    marker_volume_name,
)
from .volumes import _helper, _remove_volume_quietly, _running_helpers, check_not_in_use

log = logging.getLogger(__name__)


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
