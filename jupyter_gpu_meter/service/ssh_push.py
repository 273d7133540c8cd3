"""Writing a user's SSH keys into their running notebook containers.

After every change to a user's keys (``api/ssh-keys``, the usage page's form)
the meter writes the user's whole key list to each of their running
containers labelled ``jupyter-gpu-meter.ssh=1``, as
``/etc/jupyter-gpu-meter/ssh/authorized_keys`` (Docker's ``put_archive`` of
:func:`jupyter_gpu_meter.ssh.authorized_keys_archive`). It does the same once
for a container it sees start (a spawner that could not read the ledger
leaves no keys behind that way). The spawner writes them before a container
starts.

Every Docker and ledger call runs in :class:`KeyPusher`'s one thread: the
writes happen in the order they were asked for, and each reads the ledger
when it runs, so the last write of a user's file always holds the keys as
the ledger has them at the end. A container that is gone or refuses the
write is logged and left out of the answer; the change stays in the ledger.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from .. import labels
from ..ssh import authorized_keys_archive

log = logging.getLogger(__name__)

#: the label value that turns SSH on for a container (the spawner sets it)
SSH_ON = "1"


class KeyPusher:
    """Writes users' keys into their SSH-enabled containers (owns one worker thread).

    `api` is a docker-py ``APIClient``; `ledger` a :class:`~jupyter_gpu_meter.ledger.Ledger`;
    `hub_id` keeps to this hub's containers (:func:`jupyter_gpu_meter.labels.of_hub`).
    """

    def __init__(self, api, ledger, hub_id: str):
        self.api = api
        self.ledger = ledger
        self.hub_id = hub_id
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="gpu-meter-ssh-keys")
        #: writes for started containers still running (kept until done; the loop owns it)
        self.pending: set[asyncio.Future] = set()

    @classmethod
    def from_meter(cls, meter) -> KeyPusher | None:
        """The running meter's (its Docker client, ledger and hub id); None without Docker."""
        api, ledger = getattr(meter, "docker_api", None), getattr(meter, "ledger", None)
        if api is None or ledger is None:
            return None
        return cls(api, ledger, getattr(meter, "hub_id", ""))

    # --- blocking: in the worker thread ---------------------------------------

    def containers_of(self, user: str) -> list[dict]:
        """`user`'s running containers of this hub with SSH on (Docker's summaries)."""
        found = self.api.containers(
            filters={
                "status": "running",
                "label": [labels.MANAGED, f"{labels.USER}={user}", f"{labels.SSH}={SSH_ON}"],
            }
        )
        return [c for c in found if labels.of_hub(c.get("Labels"), self.hub_id)]

    def write(self, container_id: str, archive: bytes) -> bool:
        """Put the archive into one container; False (logged) if it is gone or refuses."""
        try:
            if self.api.put_archive(container_id, "/", archive):
                return True
            log.warning("Container %s refused the SSH keys", container_id[:12])
        except Exception as e:  # gone, stopped and removed, read-only: the next start writes
            log.warning("Writing SSH keys into container %s failed: %s", container_id[:12], e)
        return False

    def push_user(self, user: str) -> list[str]:
        """Write `user`'s keys (read now) into each of their running SSH containers;
        the servers written ("" is the default one), sorted."""
        containers = self.containers_of(user)
        if not containers:
            return []
        archive = authorized_keys_archive(self.ledger.ssh_keys(user))
        updated = [
            (c.get("Labels") or {}).get(labels.SERVER, "")
            for c in containers
            if self.write(c["Id"], archive)
        ]
        return sorted(updated)

    def push_container(self, container_id: str, user: str) -> bool:
        """Write `user`'s keys into one container (it just started)."""
        return self.write(container_id, authorized_keys_archive(self.ledger.ssh_keys(user)))

    # --- on the event loop ------------------------------------------------------

    async def call(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    async def after_change(self, user: str) -> list[str]:
        """:meth:`push_user` in the thread; [] (logged) when Docker cannot be asked."""
        try:
            return await self.call(self.push_user, user)
        except Exception as e:  # the key change is in the ledger; the next start writes it
            log.warning("Writing %s's SSH keys into their servers failed: %s", user, e)
            return []

    async def on_event(self, event: dict) -> None:
        """A Docker event: on the start of a container labelled for SSH, write its keys."""
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        action = event.get("Action") or event.get("status")
        user = attributes.get(labels.USER, "")
        if action != "start" or attributes.get(labels.SSH) != SSH_ON or not user:
            return
        if not labels.of_hub(attributes, self.hub_id):
            return
        container_id = event.get("id") or (event.get("Actor") or {}).get("ID")
        try:
            if await self.call(self.push_container, container_id, user):
                log.info("Wrote %s's SSH keys into container %s", user, container_id[:12])
        except Exception as e:
            log.warning("Reading %s's SSH keys for container %s failed: %s", user, container_id, e)

    def on_event_soon(self, event: dict) -> None:
        """:meth:`on_event` as a task of its own: the meter's event loop goes on meanwhile."""
        task = asyncio.ensure_future(self.on_event(event))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
