"""The spawner's side of metering: where a notebook finds the meter, and the record
of each stop.

Mixins of :class:`~jupyter_gpu_meter.spawner.GPUDockerSpawner`, so the spawner
(in the hub) never imports the meter service:

- :class:`MeterURLMixin`: ``$JUPYTER_GPU_METER_API_URL`` in every container;
  ``setup_meter`` and ``setup_network`` (:mod:`jupyter_gpu_meter.hubconfig`)
  put the address in ``c.GPUDockerSpawner.meter_api_url``.
- :class:`StopRecordMixin`: before removing a stopped container (at a stop,
  or when the hub's poll finds it dead), the spawner keeps Docker's times of
  its run in the ledger. Docker replays only its last
  256 events to a meter that comes back; a meter down while a busy engine moved
  past a container's ``die`` would otherwise bill that run only to when it last
  saw it running, or not at all when the whole run fell in the gap.
"""

from __future__ import annotations

import asyncio

from traitlets import HasTraits, Unicode, validate

from .clock import utcnow
from .sessions import stopped_record
from .spawner_budget import shared_ledger
from .usage.dates import isoformat

#: the variable every notebook container gets: the meter's base URL, as reachable from it
METER_API_URL_ENV = "JUPYTER_GPU_METER_API_URL"


class MeterURLMixin(HasTraits):
    """Puts :attr:`meter_api_url` in every container's environment."""

    meter_api_url = Unicode(
        "",
        help=f"""
        The meter's base URL as code inside a notebook container reaches it,
        ending in ``/``, e.g. ``http://172.18.0.1:10101/services/gpu-meter/``;
        every container gets it as ``${METER_API_URL_ENV}`` (JupyterLab's
        status bar reads ``api/server-status`` there with the server's own
        ``$JUPYTERHUB_API_TOKEN``). ``setup_meter`` sets it (with
        ``setup_network``: the network's gateway and the meter's port; with
        host networking: the meter's own URL). "": the variable is not set.
        """,
    ).tag(config=True)

    @validate("meter_api_url")
    def _check_meter_api_url(self, proposal):
        url = proposal.value
        if url and not (url.startswith(("http://", "https://")) and url.endswith("/")):
            raise ValueError(
                f"meter_api_url {url!r}: give an http(s) URL ending in '/', e.g. "
                "'http://172.18.0.1:10101/services/gpu-meter/'"
            )
        return url

    def get_env(self):
        env = super().get_env()
        if self.meter_api_url:
            env[METER_API_URL_ENV] = self.meter_api_url
        return env


def record_stop(url: str, container_id: str, record: dict) -> bool:
    """Keep a stopped container's `record` in the ledger at `url` (blocking); False
    while a SQLite ledger does not exist yet (no meter has run, none to miss it)."""
    ledger = shared_ledger(url)
    if ledger is None:
        return False
    ledger.record_stopped_container(container_id, record)
    return True


class StopRecordMixin(HasTraits):
    """Records each run the spawner stops in the ledger before removing its container (for
    a DockerSpawner with ``meter_executor`` and ``ledger_url``).

    DockerSpawner creates containers with ``AutoRemove`` when ``remove`` is True: the
    engine would remove a container that dies on its own (a crash, the OOM killer)
    before anyone read its times, and the hub never calls ``stop()`` for a server it
    finds dead. So these containers are created without ``AutoRemove`` and
    :meth:`poll` records and removes one it finds dead, as ``stop()`` does.

    The spawner also inspects the running container before it stops it (labels,
    ``StartedAt``) and again after: Docker's ``FinishedAt`` and ``ExitCode`` when the
    container is still there, else (someone else removed it) the time ``docker stop``
    returned (the hub's clock, milliseconds after the container died on the same host).
    """

    #: (the running container's inspect, when `docker stop` returned) of the last stop
    _stopping = None

    def docker(self, method, *args, **kwargs):
        if method == "create_container" and self.remove and kwargs.get("host_config"):
            # the spawner removes its containers itself, after recording their runs
            kwargs["host_config"] = {**kwargs["host_config"], "AutoRemove": False}
        return super().docker(method, *args, **kwargs)

    async def poll(self):
        """DockerSpawner's poll; a server's container found dead (it exited on its own)
        has its run recorded and is removed, as the engine's ``AutoRemove`` would."""
        status = await super().poll()
        if status is not None and self.remove and self.object_type == "container":
            if self.object_id:  # (it still exists: DockerSpawner forgets a gone one's id)
                await self.remove_object()
        return status

    async def stop_object(self):
        if self.object_type != "container":  # (a Swarm service: the node's agent meters it)
            return await super().stop_object()
        before = await self._inspect_container()
        await super().stop_object()
        self._stopping = (before, utcnow())

    async def remove_object(self):
        if self.object_type == "container":
            await self._record_stop()
        return await super().remove_object()

    async def _inspect_container(self):
        """Docker's inspect of this server's container, None if there is none; never raises
        (a record is a help to a meter that missed the events, never a reason to fail)."""
        try:
            return await self.docker("inspect_container", self.object_id or self.object_name)
        except Exception:
            return None

    async def _record_stop(self):
        """The stopped run's times, into the ledger; a failure is logged and the container
        removed all the same (the meter, if it is up, has the events)."""
        before, stopped_at = self._stopping or (None, None)
        self._stopping = None
        try:
            attrs = await self._inspect_container()
            if attrs is None and before is not None:  # removed meanwhile (by hand, or AutoRemove)
                state = before.get("State") or {}
                finished = {"Running": False, "FinishedAt": isoformat(stopped_at), "ExitCode": None}
                attrs = {**before, "State": {**state, **finished}}
            if attrs is None or (attrs.get("State") or {}).get("Running"):
                return
            await asyncio.wrap_future(
                self.meter_executor.submit(
                    record_stop, self.ledger_url, attrs["Id"], stopped_record(attrs)
                )
            )
        except Exception:
            self.log.exception(
                "Recording the stop of %s in the ledger failed; removing it all the same "
                "(a meter that missed its end bills the run to when it last saw it running)",
                self.object_name,
            )
