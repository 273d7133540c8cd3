"""Snapshot and home volumes on the Docker engine: finding, in-use checks, helpers, removal.

Everything here blocks (docker-py's ``APIClient``): callers run it off the
event loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import docker.errors

from .. import homes, labels
from .names import (
    COPY_CAPS,
    HELPER_TARGET,
    IN_USE_STATES,
    STALE_CREATED_S,
    HomeInUse,
    NoHome,
    Snapshot,
    SnapshotNotFound,
    marker_volume_name,
)


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
        from ..usage import isoformat

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
