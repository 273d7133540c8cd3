"""The spawner's side of users' storage: persistent homes, snapshot restores, datasets.

:class:`HomesMixin` is mixed into :class:`~jupyter_gpu_meter.GPUDockerSpawner`:
it makes the user's home volume at a start, restores a snapshot into it last,
mounts the chosen datasets read-only and refuses mounting another user's home
or snapshot. The volumes themselves are :mod:`jupyter_gpu_meter.homes`,
:mod:`~jupyter_gpu_meter.snapshots` and :mod:`~jupyter_gpu_meter.datasets`;
Docker work runs on DockerSpawner's executor.
"""

from __future__ import annotations

import asyncio

import docker.errors
import sqlalchemy
from traitlets import HasTraits, Unicode

from . import snapshots
from .container import ContainerRefused
from .datasets import DatasetError, Datasets, add_dataset_mounts, ensure_dataset_volume
from .homes import (
    HOME,
    SNAPSHOT,
    HomeBusy,
    HomeError,
    HomeVolumes,
    Volume,
    ensure_home,
    inspect_volume,
)
from .spawner_checks import spawn_error


class HomesMixin(HasTraits):
    """Homes, snapshot restores and datasets for a DockerSpawner (``self.client``,
    ``self.executor``, ``self.user``, ``self.hub_id``)."""

    # --- the user's persistent home -----------------------------------------

    @property
    def home_volumes(self) -> HomeVolumes:
        """The persistent-home settings (``c.HomeVolumes``), shared with the meter."""
        if not hasattr(self, "_home_volumes"):
            self._home_volumes = HomeVolumes(parent=self)
        return self._home_volumes

    #: the home volume this run mounts ("" when homes are off)
    home_volume = Unicode("")

    async def _prepare_home(self) -> str:
        """The user's home volume, made on their first start; "" when homes are off."""
        homes = self.home_volumes
        if not homes.enabled:
            return ""
        name = homes.volume_name(self.user.name, self.hub_id)
        try:
            await self.docker("inspect_volume", name)
        except docker.errors.NotFound:
            # a new home is filled from the image: have the image first
            await self.pull_image(self.image)
        try:
            created = await asyncio.wrap_future(
                self.executor.submit(
                    ensure_home,
                    self.client,
                    name,
                    user=self.user.name,
                    hub_id=self.hub_id,
                    owner=self.container_user,
                    image=self.image,
                    mount_path=homes.mount_path,
                    driver=homes.driver,
                    driver_opts=homes.volume_options(self.user.name, self.hub_id),
                )
            )
        except HomeBusy:
            raise spawn_error(
                409,
                "your home is busy: a snapshot or restore of it is running; "
                "start again when it has finished",
            ) from None
        except HomeError as e:
            self.log.error("Home of %s: %s", self._owner, e)
            raise spawn_error(500, f"your home cannot be mounted: {e}") from None
        if created:
            self.log.info("Made the home volume %s of %s", name, self.user.name)
        return name

    async def _restore_home(self, snapshot_id: str = ""):
        """Finish an interrupted restore of the home; then restore `snapshot_id`, if asked.

        (:mod:`jupyter_gpu_meter.snapshots`; the copy runs in the executor.)
        """
        if not self.home_volume:
            if snapshot_id:
                raise spawn_error(400, "starting from a snapshot needs persistent homes: off here")
            return
        try:
            await asyncio.wrap_future(
                self.executor.submit(self._restore_home_blocking, snapshot_id)
            )
        except snapshots.SnapshotNotFound as e:
            raise spawn_error(400, str(e)) from None
        except snapshots.HomeInUse as e:
            raise spawn_error(409, f"cannot start from snapshot {snapshot_id}: {e}") from None
        except HomeBusy:
            raise spawn_error(
                409, "a restore of your home is in progress: start again when it is done"
            ) from None
        except HomeError as e:
            self.log.error("Restoring the home of %s: %s", self._owner, e)
            raise spawn_error(500, f"your home cannot be restored: {e}") from None
        if snapshot_id:
            self._forget_snapshot_option()

    def _restore_home_blocking(self, snapshot_id: str):
        api, image = self.client, self.home_volumes.helper_image
        snapshots.finish_interrupted_restore(api, self.home_volume, helper_image=image)
        if snapshot_id:
            found = snapshots.find_snapshot(
                api, snapshot_id, hub_id=self.hub_id, user=self.user.name
            )
            self.log.info("Restoring snapshot %s into %s", found.volume, self.home_volume)
            snapshots.restore_snapshot(
                api,
                found,
                self.home_volume,
                user=self.user.name,
                hub_id=self.hub_id,
                helper_image=image,
            )

    def _forget_snapshot_option(self):
        """Restore a snapshot once: the hub keeps ``user_options`` for the next start
        without options (an API call with no body, the admin panel's Start), which
        must not restore the snapshot again over the work done since."""
        self.user_options = {k: v for k, v in (self.user_options or {}).items() if k != "snapshot"}
        orm_spawner = self.orm_spawner
        if orm_spawner is None or "snapshot" not in (orm_spawner.user_options or {}):
            return
        orm_spawner.user_options = {
            k: v for k, v in orm_spawner.user_options.items() if k != "snapshot"
        }
        db = self.db or sqlalchemy.inspect(orm_spawner).session
        if db is not None:
            db.commit()

    async def _snapshot_choices(self) -> list:
        """The user's snapshots for the spawn form's "Start from" ([] when homes are off)."""
        if not self.home_volumes.enabled:
            return []
        return await asyncio.wrap_future(
            self.executor.submit(
                snapshots.list_snapshots, self.client, hub_id=self.hub_id, user=self.user.name
            )
        )

    @property
    def volume_binds(self):
        binds = super().volume_binds
        if self.home_volume:
            mount = self.home_volumes.mount_path
            taken = [
                source
                for source, bind in binds.items()
                if bind.get("bind", "").rstrip("/") == mount
            ]
            if taken:
                raise ContainerRefused(
                    f"c.DockerSpawner.volumes mounts {taken[0]} at {mount}, where the user's "
                    "home goes: mount it elsewhere, or set c.HomeVolumes.mount_path to another "
                    "folder, or turn homes off with c.HomeVolumes.enabled = False"
                )
            if self.home_volume in binds:
                raise ContainerRefused(
                    f"c.DockerSpawner.volumes mounts the user's home volume {self.home_volume} "
                    f"at {binds[self.home_volume].get('bind')}; it is mounted at {mount} "
                    "already: remove it from c.DockerSpawner.volumes"
                )
            # nocopy: the home was filled when it was made (homes.ensure_home)
            binds[self.home_volume] = {"bind": mount, "mode": "rw,nocopy"}
        return binds

    def _check_volume_owners(self, host_config) -> None:
        """Refuse mounting a home or snapshot volume that is not this user's (blocking).

        Named volumes come from the admin's ``volumes``/``extra_host_config``
        too: a template mistake must not hand one user another's files.
        """
        names = [
            str(bind).split(":", 1)[0]
            for bind in host_config.get("Binds") or []
            if not str(bind).startswith("/")
        ]
        names += [
            str(mount.get("Source") or "")
            for mount in host_config.get("Mounts") or []
            if isinstance(mount, dict) and str(mount.get("Type", "volume")).lower() == "volume"
        ]
        for name in filter(None, names):
            info = inspect_volume(self.client, name)
            if info is None:
                continue  # Docker makes it, empty and unlabelled
            volume = Volume.from_docker(info)
            if volume.kind in (HOME, SNAPSHOT) and (
                volume.user != self.user.name or volume.hub_id != self.hub_id
            ):
                raise ContainerRefused(
                    f"the volume {name} is the {volume.kind} of user {volume.user!r}"
                    f"{'' if volume.hub_id == self.hub_id else ' on another hub'}; "
                    f"it cannot be mounted into a server of {self.user.name!r}"
                )

    def _docker(self, method, *args, **kwargs):
        if method == "create_container":
            self._check_volume_owners(kwargs.get("host_config") or {})
        return super()._docker(method, *args, **kwargs)

    # --- datasets ----------------------------------------------------------

    #: the datasets this run mounts (set by each start before its container is made)
    _chosen_datasets = ()

    def _datasets(self) -> dict:
        """Dataset name -> :class:`~jupyter_gpu_meter.datasets.Dataset`, from ``c.Datasets``.

        A bad definition is the admin's: a 500 that the hub shows as it is.
        """
        try:
            return Datasets(parent=self).by_name()
        except ValueError as e:
            raise spawn_error(500, str(e)) from None

    async def _prepare_datasets(self, names) -> None:
        """Make the chosen datasets' volumes where the hub makes them; refuse unusable ones."""
        by_name = self._datasets()
        chosen = [by_name[name] for name in names]
        try:
            for dataset in chosen:
                await asyncio.wrap_future(
                    self.executor.submit(ensure_dataset_volume, self.client, dataset)
                )
        except DatasetError as e:
            self.log.error("Datasets of %s: %s", self._owner, e)
            raise spawn_error(500, str(e)) from None
        self._chosen_datasets = tuple(chosen)

    def _with_datasets(self, host_config) -> dict:
        """The container's host config with this run's datasets mounted read-only."""
        return add_dataset_mounts(
            host_config or {},
            self._chosen_datasets,
            self.home_volumes.mount_path,
        )
