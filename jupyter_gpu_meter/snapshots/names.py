"""Snapshots' names, labels, ids and errors, and :class:`Snapshot` (pure)."""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from .. import homes, labels
from ..clock import as_utc

#: on a snapshot: its id (unique among its user's snapshots), e.g. "20261130-060102-a1b2c3"
SNAPSHOT_ID = labels.PREFIX + "snapshot-id"
#: on a snapshot: when it was taken (ISO 8601 UTC)
SNAPSHOT_CREATED = homes.SNAPSHOT_CREATED
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
        from ..usage import isoformat

        return {
            "id": self.id,
            "user": self.user,
            "label": self.label,
            "created_at": isoformat(self.created_at) if self.created_at else None,
            "size_bytes": self.size_bytes,
            "volume": self.volume,
            "home": self.home,
        }
