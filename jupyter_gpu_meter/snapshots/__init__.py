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

Restore is all-or-nothing: everything happens in the home volume itself and
the commit is one ``rename`` (:mod:`.restore` says how);
:func:`finish_interrupted_restore` (run before any operation on a home and by
the spawner before a server starts) rolls a committed restore forward and
removes an uncommitted one, so a crash anywhere leaves either the old home or
the snapshot, never a mix.

The modules: :mod:`.names` (pure: ids, volume names, labels, errors,
:class:`Snapshot`), :mod:`.volumes` (finding snapshots and homes, in-use
checks, helper containers, removal), :mod:`.take` and :mod:`.restore`.
Everything but the names blocks (docker-py's ``APIClient`` and helper
containers that copy): callers run it off the event loop.
"""

from .names import (
    COPY_CAPS,
    HELPER_TARGET,
    ID_PATTERN,
    IN_USE_STATES,
    MAX_LABEL,
    RESTORE,
    RESTORE_FROM,
    RESTORING,
    SNAPSHOT_CREATED,
    SNAPSHOT_ID,
    SNAPSHOT_LABEL,
    STALE_CREATED_S,
    TAKE,
    HomeInUse,
    NoHome,
    Snapshot,
    SnapshotError,
    SnapshotNotFound,
    check_label,
    marker_volume_name,
    new_snapshot_id,
    snapshot_volume_name,
)
from .restore import (
    COMMIT_SCRIPT,
    FINISH_SCRIPT,
    STAGE_SCRIPT,
    finish_interrupted_restore,
    restore_snapshot,
)
from .take import TAKE_SCRIPT, take_snapshot
from .volumes import (
    Home,
    check_not_in_use,
    clear_stale_helpers,
    containers_using,
    delete_snapshot,
    find_home,
    find_snapshot,
    list_homes,
    list_snapshots,
    not_found_message,
    remove_home,
)

__all__ = [
    "COMMIT_SCRIPT",
    "COPY_CAPS",
    "FINISH_SCRIPT",
    "HELPER_TARGET",
    "ID_PATTERN",
    "IN_USE_STATES",
    "MAX_LABEL",
    "RESTORE",
    "RESTORE_FROM",
    "RESTORING",
    "SNAPSHOT_CREATED",
    "SNAPSHOT_ID",
    "SNAPSHOT_LABEL",
    "STAGE_SCRIPT",
    "STALE_CREATED_S",
    "TAKE",
    "TAKE_SCRIPT",
    "Home",
    "HomeInUse",
    "NoHome",
    "Snapshot",
    "SnapshotError",
    "SnapshotNotFound",
    "check_label",
    "check_not_in_use",
    "clear_stale_helpers",
    "containers_using",
    "delete_snapshot",
    "find_home",
    "find_snapshot",
    "finish_interrupted_restore",
    "list_homes",
    "list_snapshots",
    "marker_volume_name",
    "new_snapshot_id",
    "not_found_message",
    "remove_home",
    "restore_snapshot",
    "snapshot_volume_name",
    "take_snapshot",
]
