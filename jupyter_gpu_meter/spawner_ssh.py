"""SSH into a server, on or off, and the user's keys written into its container at create.

A mixin of :class:`~jupyter_gpu_meter.spawner.GPUDockerSpawner`. Whether a
server gets SSH is :attr:`SSHMixin.ssh_enabled`, or its profile's ``"ssh"``
where the profile has one; the container says which with the variable
``$JUPYTER_GPU_METER_SSH`` (the image starts its sshd only on ``"1"``) and
the label ``jupyter-gpu-meter.ssh`` (the meter writes keys only into
containers labelled ``"1"``), both set by
:func:`~jupyter_gpu_meter.container.enforce_create_kwargs`.

With SSH on, the user's public keys are read from the ledger on the
spawner's meter executor (one :class:`~jupyter_gpu_meter.ledger.Ledger` per
database, :func:`~jupyter_gpu_meter.spawner_budget.shared_ledger`) while
Docker creates the container, and written into it before it starts, as
``/etc/jupyter-gpu-meter/ssh/authorized_keys`` (root's, 0644;
:func:`~jupyter_gpu_meter.ssh.authorized_keys_archive`). A ledger that
cannot be read does not stop the start: the file is written empty, a warning
names the cause, and the meter writes the keys when it sees the container start.
"""

from __future__ import annotations

import asyncio

from traitlets import Bool, HasTraits, default

from .container import SSH_ENV
from .spawner_budget import shared_ledger
from .ssh import authorized_keys_archive


def read_ssh_keys(url: str, user: str) -> list:
    """`user`'s keys (:class:`~jupyter_gpu_meter.ledger.SSHKeyRecord`) in the ledger at
    `url` (blocking); [] while a SQLite ledger does not exist yet (no meter has run)."""
    ledger = shared_ledger(url)
    return [] if ledger is None else ledger.ssh_keys(user)


class SSHMixin(HasTraits):
    """SSH settings and keys for a DockerSpawner with ``meter_executor`` and ``ledger_url``."""

    ssh_enabled = Bool(
        True,
        help="""
        Whether users may SSH into their servers (through the hub's proxy, with
        their public keys; see the how-to "SSH access"), e.g. ``False`` to turn
        it off on every server. A profile in ``profile_list`` with ``"ssh": True``
        or ``"ssh": False`` decides for its own servers. Takes effect at a
        server's next start.
        """,
    ).tag(config=True)

    #: whether the current (or last) run has SSH: :attr:`ssh_enabled` or its profile's
    ssh = Bool()

    @default("ssh")
    def _ssh_default(self):
        return self.ssh_enabled

    def choose_ssh(self, profile_ssh: bool | None) -> bool:
        """Set :attr:`ssh` for a start: the profile's ``ssh``, or :attr:`ssh_enabled`."""
        self.ssh = self.ssh_enabled if profile_ssh is None else profile_ssh
        return self.ssh

    def get_env(self):
        env = super().get_env()
        env[SSH_ENV] = "1" if self.ssh else "0"
        return env

    async def _ssh_keys_archive(self) -> bytes:
        """The tar of this user's ``authorized_keys``; an empty file when the ledger
        cannot be read (logged as a warning with its cause)."""
        user = self.user.name
        try:
            keys = await asyncio.wrap_future(
                self.meter_executor.submit(read_ssh_keys, self.ledger_url, user)
            )
            return authorized_keys_archive(keys)
        except Exception as e:
            self.log.warning(
                "Reading the SSH keys of %s from the ledger failed (%s: %s); %s starts with "
                "none, and the meter writes them when it sees the server start",
                user,
                type(e).__name__,
                str(e).strip().splitlines()[0] if str(e).strip() else "no message",
                self.object_name,
            )
            return authorized_keys_archive([])

    async def create_object(self):
        # the ledger is read while Docker creates the container
        keys = asyncio.ensure_future(self._ssh_keys_archive()) if self.ssh else None
        try:
            created = await super().create_object()
        except BaseException:
            if keys is not None:
                keys.cancel()
            raise
        if keys is not None:
            # created, not started: the file is there before sshd can read it
            await self.docker("put_archive", created[self.object_id_key], "/", await keys)
        return created
