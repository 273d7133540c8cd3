"""``jupyter-gpu-meter agent``: the meter of one GPU server (node) of a cluster.

It is the meter (:class:`~jupyter_gpu_meter.service.app.MeterService`) without
its web server, its policies and the hub's API, plus two things: every
session it records carries its node's name, and every ``heartbeat_interval``
it upserts its node's row of the ledger (``nodes``) with the node's GPUs. The
hub's meter, in cluster mode, reads the ledger the agents write
(:mod:`~jupyter_gpu_meter.service.nodes`). The same loops as the meter's
record sessions, rollups and process groups: Docker events and the reconcile,
the GPU sampler, the ledger flush (:mod:`~jupyter_gpu_meter.service.loops`).

When the hub declared the node lost (its agent or its network was gone for
two heartbeats), the agent's next heartbeat says so and a reconcile settles
the "node lost" sessions from Docker's own times: a container still running
since its session's start gets its session back (one session, never two);
one that stopped earlier gets Docker's end (see
:meth:`~jupyter_gpu_meter.sessions.SessionTracker.reconcile`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets

from traitlets import Float, Unicode, validate

from .._version import __version__
from ..gpus import GPUInventory
from ..identity import HUB_ID_ENV, HubIdentity
from ..pricing import Pricing
from ..sampler import GPUSampler
from ..sessions import EVENTS_SINCE_KEY, Opening
from .app import MeterService
from .state import error_class


class AgentConfigError(ValueError):
    """The agent cannot run with these settings; the message says what to set."""


class MeterAgent(MeterService):
    """The meter of one GPU server in a cluster: its Docker events, GPUs and
    heartbeats into the shared ledger, tagged with the node."""

    name = "jupyter-gpu-meter agent"
    description = __doc__
    classes = [GPUInventory, GPUSampler, Pricing, HubIdentity]
    aliases = {
        "config": "MeterService.config_file",
        "db-url": "MeterService.db_url",
        "log-level": "Application.log_level",
        "node": "MeterAgent.node",
        "heartbeat-interval": "MeterAgent.heartbeat_interval",
        "hub-id": "HubIdentity.hub_id",
    }
    subcommands = {}

    node = Unicode(
        "",
        help="""
        This node's name, e.g. ``gpu-07``: what its sessions carry
        (``sessions.node``) and its row of ``nodes``. "" (the default): the
        Docker engine's ``Name`` (``docker info``), which is the Swarm node's
        hostname. At most 100 characters.
        """,
    ).tag(config=True)

    @validate("node")
    def _check_node(self, proposal):
        value = proposal.value
        if len(value) > 100 or "," in value or value != value.strip():
            raise AgentConfigError(
                f"node {value!r}: give at most 100 characters, no commas, no spaces around "
                'it (or "" for the Docker engine\'s Name)'
            )
        return value

    heartbeat_interval = Float(
        15.0,
        min=0.1,
        help="""
        Seconds between two heartbeats of this node into the ledger, e.g. 15
        (the default). The hub declares the node lost after 2 intervals
        without one and ends its sessions at the last: a server that kept
        running while the agent was gone is under-billed by at most that much
        until the agent returns and reopens its session.
        """,
    ).tag(config=True)

    def start(self):
        try:
            asyncio.run(self.start_async())
        except AgentConfigError as e:
            self.log.critical("%s", e)
            self.exit(1)

    # --- set up ------------------------------------------------------------------

    def _setup(self, *, docker_api=None, hub_api=None):
        self.cluster = False  # an agent meters its engine (a shared config may say True)
        if not (os.environ.get(HUB_ID_ENV) or "hub_id" in self.config.get("HubIdentity", {})):
            raise AgentConfigError(
                "The agent meters only its hub's containers and needs the hub's id: give "
                f"--hub-id=<id> or ${HUB_ID_ENV}, the value of the hub's "
                "c.HubIdentity.hub_id (its containers' label jupyter-gpu-meter.hub)"
            )
        if docker_api is None:
            import docker

            docker_api = docker.from_env().api
        if not self.node:
            self.node = docker_api.info()["Name"]
        # rollups and process rows: each writer replaces only its own rows
        self.writer_id = f"{self.node}-{os.getpid()}-{secrets.token_hex(3)}"
        super()._setup(docker_api=docker_api, hub_api=hub_api)
        self.tracker.node = self.node
        self.events_key = f"{EVENTS_SINCE_KEY}@{self.node}"
        self.started_at = self.clock()
        self.gpus: list[dict] = []

    # --- what differs from the meter ------------------------------------------------

    async def _loops(self) -> list:
        self.log.info("Agent of node %r, hub %r", self.node, self.hub_id)
        self.gpus = await asyncio.get_running_loop().run_in_executor(
            self.sampler_executor, self._discover_gpus
        )
        await self._heartbeat()  # before the first reconcile: the hub sees the node back
        beat = self._every(self.heartbeat_interval, self._heartbeat, "Heartbeat", first=False)
        return [beat, *await self._metering_loops()]

    def _listen(self) -> list:
        return []  # no web server: the hub's meter serves pages over the ledger

    def _discover_gpus(self) -> list[dict]:
        """This node's GPUs, as the heartbeat reports them (blocking: NVML)."""
        try:
            inventory = self.inventory_source.discover()
        except Exception as e:
            self.log.warning("GPU inventory failed (%s): heartbeats report no GPUs", e)
            return []
        return [
            {
                "uuid": gpu.uuid,
                "index": gpu.index,
                "model": gpu.model,
                "memory_total_bytes": gpu.memory_total_bytes,
            }
            for gpu in inventory.gpus
        ]

    async def _heartbeat(self):
        """Upsert this node's row, each GPU with what the last GPU sample found wrong
        with it (the hub's GPU-health policy stops its server); if the hub had
        declared the node lost, reconcile at once.

        A failed heartbeat is logged and tried again on the next period, never
        later (a longer back-off would make the hub declare the node lost)."""
        unhealthy = self.runner.unhealthy  # the last GPU sample's (PolicyRunner.observe)
        gpus = [{**gpu, "problem": unhealthy.get(gpu["uuid"], "")} for gpu in self.gpus]
        write = functools.partial(
            self.ledger.heartbeat,
            self.node,
            gpus=gpus,
            agent_version=__version__[:64],
            agent_started_at=self.started_at,
            heartbeat_interval_s=self.heartbeat_interval,
            at=self.clock(),
        )
        try:
            was_lost = await self._in_ledger_thread(write)
        except Exception as e:
            self.log.warning(
                "Heartbeat failed (%s), retrying in %ss", error_class(e), self.heartbeat_interval
            )
            return
        if was_lost is not None:
            self.log.warning(
                "The hub declared node %s lost at %s: reconciling its sessions with Docker",
                self.node,
                was_lost.isoformat(),
            )
            await self._reconcile()

    def _session_open_failed(self, opening: Opening, error: BaseException):
        """No hub API here: logged and counted; the server runs unbilled."""
        container = opening.container
        self.state.open_failed(opening, error, self.clock())
        self.log.error(
            "The ledger refused to open the session of %s/%s (container %s) on node %s: %s. "
            "It runs unbilled: the agent cannot stop servers (no hub API).",
            container.user,
            container.server,
            container.container_id[:12],
            self.node,
            error_class(error),
        )
