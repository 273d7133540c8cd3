"""Taking a snapshot: a helper container copies the home into a new snapshot volume."""

from __future__ import annotations

import re

from .. import homes
from ..clock import as_utc, utcnow
from ..usage import isoformat
from .names import (
    SNAPSHOT_CREATED,
    SNAPSHOT_ID,
    SNAPSHOT_LABEL,
    TAKE,
    NoHome,
    Snapshot,
    SnapshotError,
    check_label,
    new_snapshot_id,
    snapshot_volume_name,
)
from .restore import finish_interrupted_restore
from .volumes import _helper, _remove_volume_quietly

# --- the helper's script (sh -ec, GNU coreutils and findutils) ----------------------------

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
        created=now,
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
