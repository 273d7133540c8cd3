"""``jupyter-gpu-meter homes`` and ``snapshots``: users' homes and snapshots, for admins.

Run on the hub's host by someone who may use its Docker engine, with the
hub's config (``--config jupyterhub_config.py``, for ``c.HomeVolumes``) and
in the hub's working directory (or with ``--hub-id``), so the hub's id is the
hub's own:

    jupyter-gpu-meter homes list
    jupyter-gpu-meter homes remove USER --yes [--snapshots]
    jupyter-gpu-meter snapshots list [--user U]
    jupyter-gpu-meter snapshots take --user U [--label TEXT]
    jupyter-gpu-meter snapshots restore ID --user U --yes
    jupyter-gpu-meter snapshots delete ID --user U
"""

from __future__ import annotations

import json
import sys

import requests
from traitlets import Bool, CaselessStrEnum, Unicode
from traitlets.config import Application

from .. import homes, snapshots
from ..identity import HubIdentity
from .common import _Group, table


class _HomesCommand(Application):
    """A command on the hub's Docker engine, with the hub's home settings."""

    classes = [homes.HomeVolumes, HubIdentity]
    aliases = {
        "config": "_HomesCommand.config_file",
        "hub-id": "HubIdentity.hub_id",
        "format": "_HomesCommand.format",
    }
    config_file = Unicode("", help="The hub's config file, e.g. jupyterhub_config.py.").tag(
        config=True
    )
    format = CaselessStrEnum(["table", "json"], "table", help="Output: table or json.").tag(
        config=True
    )

    def initialize(self, argv=None):
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
            self.update_config(self.cli_config)

    @property
    def settings(self) -> homes.HomeVolumes:
        return homes.HomeVolumes(parent=self)

    @property
    def hub_id(self) -> str:
        return HubIdentity(parent=self).hub_id

    def argument(self, what: str) -> str:
        if len(self.extra_args) != 1:
            raise ValueError(f"give {what} (one), e.g. {self.name} {what.upper()}")
        return self.extra_args[0]

    def start(self):
        try:
            import docker

            api = docker.from_env().api
            output = self.run(api)
        except (ValueError, homes.HomeError) as e:
            self.log.critical("%s", e)
            self.exit(2)
        except (docker.errors.DockerException, requests.RequestException) as e:
            self.log.critical("the Docker engine did not answer: %s", e)
            self.exit(3)
        sys.stdout.write(output)

    def run(self, api) -> str:
        raise NotImplementedError

    def show(self, rows: list[dict], columns: list[str]) -> str:
        if self.format == "json":
            return json.dumps(rows, indent=2) + "\n"
        return table(columns, rows)


class _UserCommand(_HomesCommand):
    aliases = {**_HomesCommand.aliases, "user": "_UserCommand.user"}
    user = Unicode("", help="The JupyterHub user whose snapshots these are, e.g. alice.").tag(
        config=True
    )

    def need_user(self) -> str:
        if not self.user:
            raise ValueError("say whose: --user NAME")
        return self.user


class HomesListCommand(_HomesCommand):
    """Every user's home volume on this hub."""

    name = "jupyter-gpu-meter homes list"

    def run(self, api):
        found = snapshots.list_homes(api, hub_id=self.hub_id)
        return self.show(
            [home.to_json() for home in found],
            ["user", "volume", "created_at", "snapshots", "in_use"],
        )


class HomesRemoveCommand(_HomesCommand):
    """Remove a user's home volume, for good (refused while a server of theirs runs)."""

    name = "jupyter-gpu-meter homes remove"
    flags = {
        "yes": ({"HomesRemoveCommand": {"yes": True}}, "Yes, remove it: the files are gone."),
        "snapshots": (
            {"HomesRemoveCommand": {"with_snapshots": True}},
            "Remove the user's snapshots too (kept otherwise).",
        ),
    }
    yes = Bool(False, help="Confirm the removal.").tag(config=True)
    with_snapshots = Bool(False, help="Remove the user's snapshots too.").tag(config=True)

    def run(self, api):
        user = self.argument("user")
        if not self.yes:
            raise ValueError(f"removing {user}'s home deletes their files for good: add --yes")
        removed = snapshots.remove_home(
            api, user, hub_id=self.hub_id, with_snapshots=self.with_snapshots
        )
        if self.format == "json":
            return json.dumps(removed) + "\n"
        extra = f" and {len(removed['snapshots'])} snapshot(s)" if removed["snapshots"] else ""
        return f"removed the home of {user} ({', '.join(removed['volumes'])}){extra}\n"


SNAPSHOT_COLUMNS = ["user", "id", "created_at", "label", "size_bytes", "volume"]


class SnapshotsListCommand(_UserCommand):
    """Snapshots of one user (--user), or everyone's, newest first."""

    name = "jupyter-gpu-meter snapshots list"

    def run(self, api):
        found = snapshots.list_snapshots(api, hub_id=self.hub_id, user=self.user or None)
        return self.show([s.to_json() for s in found], SNAPSHOT_COLUMNS)


class SnapshotsTakeCommand(_UserCommand):
    """Take a snapshot of a user's home (the server may run)."""

    name = "jupyter-gpu-meter snapshots take"
    aliases = {**_UserCommand.aliases, "label": "SnapshotsTakeCommand.label"}
    label = Unicode("", help="A short label, e.g. 'before the big run'.").tag(config=True)

    def run(self, api):
        user = self.need_user()
        settings = self.settings
        snapshot = snapshots.take_snapshot(
            api,
            settings.volume_name(user, self.hub_id),
            user=user,
            hub_id=self.hub_id,
            helper_image=settings.helper_image,
            label=self.label,
        )
        return self.show([snapshot.to_json()], SNAPSHOT_COLUMNS)


class SnapshotsRestoreCommand(_UserCommand):
    """Replace a user's home with one of their snapshots (all or nothing)."""

    name = "jupyter-gpu-meter snapshots restore"
    flags = {"yes": ({"SnapshotsRestoreCommand": {"yes": True}}, "Yes, replace the home.")}
    yes = Bool(False, help="Confirm the restore.").tag(config=True)

    def run(self, api):
        snapshot_id, user = self.argument("id"), self.need_user()
        if not self.yes:
            raise ValueError(
                f"a restore replaces everything in {user}'s home with the snapshot: add --yes"
            )
        settings = self.settings
        snapshot = snapshots.find_snapshot(api, snapshot_id, hub_id=self.hub_id, user=user)
        snapshots.restore_snapshot(
            api,
            snapshot,
            settings.volume_name(user, self.hub_id),
            user=user,
            hub_id=self.hub_id,
            helper_image=settings.helper_image,
        )
        return f"restored snapshot {snapshot.id} into the home of {user}\n"


class SnapshotsDeleteCommand(_UserCommand):
    """Delete one of a user's snapshots."""

    name = "jupyter-gpu-meter snapshots delete"

    def run(self, api):
        snapshot_id, user = self.argument("id"), self.need_user()
        snapshot = snapshots.find_snapshot(api, snapshot_id, hub_id=self.hub_id, user=user)
        snapshots.delete_snapshot(api, snapshot)
        return f"deleted snapshot {snapshot.id} of {user}\n"


class HomesCommand(_Group):
    """Users' home volumes: list, remove."""

    name = "jupyter-gpu-meter homes"
    subcommands = {
        "list": (HomesListCommand, HomesListCommand.__doc__),
        "remove": (HomesRemoveCommand, HomesRemoveCommand.__doc__),
    }


class SnapshotsCommand(_Group):
    """Snapshots of users' homes: list, take, restore, delete."""

    name = "jupyter-gpu-meter snapshots"
    subcommands = {
        "list": (SnapshotsListCommand, SnapshotsListCommand.__doc__),
        "take": (SnapshotsTakeCommand, SnapshotsTakeCommand.__doc__),
        "restore": (SnapshotsRestoreCommand, SnapshotsRestoreCommand.__doc__),
        "delete": (SnapshotsDeleteCommand, SnapshotsDeleteCommand.__doc__),
    }


for _command in (
    HomesListCommand,
    HomesRemoveCommand,
    SnapshotsListCommand,
    SnapshotsTakeCommand,
    SnapshotsRestoreCommand,
    SnapshotsDeleteCommand,
    HomesCommand,
    SnapshotsCommand,
):
    _command.description = _command.__doc__
