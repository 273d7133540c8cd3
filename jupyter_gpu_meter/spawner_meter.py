"""The spawner's side of metering: where a notebook finds the meter, and the record
of each stop.

Mixins of :class:`~jupyter_gpu_meter.spawner.GPUDockerSpawner`, so the spawner
(in the hub) never imports the meter service:

- :class:`MeterURLMixin`: ``$JUPYTER_GPU_METER_API_URL`` in every container;
  ``setup_meter`` and ``setup_network`` (:mod:`jupyter_gpu_meter.hubconfig`)
  put the address in ``c.GPUDockerSpawner.meter_api_url``.
- :class:`StopRecordMixin`: before removing a stopped container, the spawner
  keeps Docker's times of its run in the ledger. Docker replays only its last
  256 events to a meter that comes back; a meter down while a busy engine moved
  past a container's ``die`` would otherwise bill that run only to when it last
  saw it running, or not at all when the whole run fell in the gap.
"""

from __future__ import annotations

import asyncio

from traitlets import HasTraits, Unicode, validate

from .sessions import stopped_record
from .spawner_budget import shared_ledger

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
    """Records a stopped container's run in the ledger before removing it (for a
    DockerSpawner with ``meter_executor`` and ``ledger_url``)."""

    async def remove_object(self):
        if self.object_type == "container":  # (a Swarm service: the node's agent meters it)
            await self._record_stop()
        return await super().remove_object()

    async def _record_stop(self):
        """Docker's times of the stopped run, into the ledger; a failure is logged and the
        container removed all the same (the meter, if it is up, has the event)."""
        try:
            attrs = await self.get_object()
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
