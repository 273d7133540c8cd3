"""Session boundaries from Docker: events for exact times, reconcile for what events missed.

A session is one run of one notebook container: it opens when Docker starts
the container and closes when the container dies. Docker's events carry
nanosecond times; a reconcile against Docker's container list (at start-up and
on a period) opens sessions whose start event was missed and closes sessions
whose container is no longer running, from what Docker still knows.

The ledger's writes are idempotent (one session per container run), so seeing
an event twice, or both an event and a reconcile, never counts twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from . import labels
from .clock import parse_docker_time, utcnow
from .pricing import PriceSnapshot, Pricing

log = logging.getLogger(__name__)

#: the Docker events the tracker listens to
EVENTS = ("start", "kill", "die", "destroy")
#: meter_state key: the time (ns since the epoch) of the last Docker event handled
EVENTS_SINCE_KEY = "docker_events_since_ns"

REASON_STOPPED = "stopped"
REASON_KILLED = "killed"
#: the end reason of a session closed because its node stopped reporting (cluster mode)
#: (the same words as ``ledger.nodes.NODE_LOST``, which the hub's node sweep writes)
REASON_NODE_LOST = "node lost"
REASON_GONE = (
    "container gone while the meter was not watching: closed at the last time it was seen running"
)


def reason_exited(code) -> str:
    return f"exited with code {code}"


def reason_recorded(code) -> str:
    """The end reason of a run closed from the hub's record of its stop (`code` None: the
    engine had removed the container before the spawner could read its exit code)."""
    how = REASON_STOPPED if code is None else reason_exited(code)
    return f"{how} (from the hub's record of its stop: the meter missed the event)"


def stopped_record(attrs: dict) -> dict:
    """What the meter needs of a stopped container, from Docker's inspect `attrs`: its
    id, this product's labels and its run's times. Kept in the ledger when the hub
    removes the container (:meth:`SessionTracker.reconcile` reads it). Never its
    environment: that holds the server's API token.
    """
    config = attrs.get("Config") or {}
    state = attrs.get("State") or {}
    found = config.get("Labels") or {}
    return {
        "Id": attrs["Id"],
        "Config": {"Labels": {k: v for k, v in found.items() if k.startswith(labels.PREFIX)}},
        "State": {
            "Running": False,
            **{key: state.get(key) for key in ("StartedAt", "FinishedAt", "ExitCode")},
        },
    }


@dataclass(frozen=True)
class ManagedContainer:
    """What Docker says about one container made by the GPU spawner."""

    container_id: str
    user: str
    server: str
    gpu_uuids: tuple[str, ...]
    gpu_model: str
    profile: str
    price: PriceSnapshot | None
    running: bool
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    #: the image's display name (``allowed_images`` key) from its label; "" if unknown
    image: str = ""
    #: the node (Docker engine's name) it runs on; "" on one host
    node: str = ""

    @classmethod
    def from_inspect(cls, attrs: dict, node: str = "") -> ManagedContainer:
        config = attrs.get("Config") or {}
        found = config.get("Labels") or {}
        state = attrs.get("State") or {}
        try:
            price = PriceSnapshot.from_labels(found)
        except (KeyError, ValueError):
            price = None  # made by a spawner that did not label prices
        return cls(
            container_id=attrs["Id"],
            user=found.get(labels.USER, ""),
            server=found.get(labels.SERVER, ""),
            gpu_uuids=tuple(labels.gpus_of_container(found, config.get("Env"))),
            gpu_model=found.get(labels.GPU_MODEL, ""),
            profile=found.get(labels.PROFILE, ""),
            price=price,
            running=bool(state.get("Running")),
            started_at=parse_docker_time(state.get("StartedAt", "")),
            finished_at=parse_docker_time(state.get("FinishedAt", "")),
            exit_code=state.get("ExitCode"),
            image=found.get(labels.IMAGE, ""),
            node=node,
        )

    @classmethod
    def from_session(cls, session) -> ManagedContainer:
        """The container as the ledger's `session` (a
        :class:`~jupyter_gpu_meter.ledger.SessionRecord`) has it: the hub's view in
        cluster mode, where the nodes' agents watch Docker."""
        return cls(
            container_id=session.container_id,
            user=session.user,
            server=session.server,
            gpu_uuids=session.gpu_uuids,
            gpu_model=session.gpu_model,
            profile=session.profile,
            price=session.price,
            running=session.ended_at is None,
            started_at=session.started_at,
            finished_at=session.ended_at,
            exit_code=None,
            image=session.image,
            node=session.node,
        )


#: a stopped container's record the meter cannot read: forgotten, never billed
_NOTHING_KNOWN = ManagedContainer("", "", "", (), "", "", None, False, None, None, None)


def _same_start(docker_start: datetime | None, ledger_start: datetime) -> bool:
    """Whether a container's StartedAt is its session's start (the same run): within 1 s
    (the session may have its start event's time, a hair from StartedAt)."""
    return docker_start is not None and abs((docker_start - ledger_start).total_seconds()) <= 1


def _labels_of(summary: dict) -> dict:
    return summary.get("Labels") or {}


def _event_time(event: dict) -> datetime:
    if "timeNano" in event:
        seconds, nanos = divmod(int(event["timeNano"]), 1_000_000_000)
        return datetime.fromtimestamp(seconds, timezone.utc).replace(microsecond=nanos // 1000)
    return datetime.fromtimestamp(int(event["time"]), timezone.utc)


@dataclass(frozen=True)
class Opening:
    """A session to open: `container` started at `started_at`, charged at `price`."""

    container: ManagedContainer
    started_at: datetime
    price: PriceSnapshot


@dataclass(frozen=True)
class Closing:
    """A session to close at `ended_at`, for `reason`."""

    container_id: str
    ended_at: datetime
    reason: str


@dataclass(frozen=True)
class SessionChanges:
    """What one reconcile or one Docker event found, for the event loop to apply.

    Made by :class:`SessionTracker` in the meter's ledger thread and applied,
    on the event loop, by :meth:`jupyter_gpu_meter.service.state.MeterState.apply`,
    which changes the meter's state and names the ledger writes to queue. A
    value: frozen, and nothing in it is shared with the thread that made it.
    """

    #: sessions to open (a reconcile lists every running container: opens are idempotent)
    opened: tuple[Opening, ...] = ()
    #: sessions to close whatever the meter holds (a reconcile found them gone)
    closed: tuple[Closing, ...] = ()
    #: a reconcile's answer: every running managed container (replaces the running set)
    running: tuple[ManagedContainer, ...] | None = None
    #: when a reconcile saw `running` running
    seen_at: datetime | None = None
    #: a ``kill`` event: (container id, signal)
    killed: tuple[str, int] | None = None
    #: a ``die`` event: (container id, when, exit code); the loop words the reason
    died: tuple[str, datetime, object] | None = None
    #: a ``destroy`` event: (container id, when)
    removed: tuple[str, datetime] | None = None
    #: the Docker event's time (ns since the epoch, as a str), to resume from after a restart
    events_since_ns: str | None = None
    #: "node lost" sessions whose container survived: reopen them (cluster mode)
    reopened: tuple[str, ...] = ()
    #: "node lost" sessions whose container stopped before the node's last heartbeat:
    #: their end moves back to Docker's (cluster mode)
    ended_earlier: tuple[Closing, ...] = ()
    #: the hub's records of stopped containers this reconcile settled: to forget
    forgotten: tuple[str, ...] = ()


class SessionTracker:
    """Works out session changes from Docker and the ledger; holds no state of its own.

    Its methods block (Docker and database reads): the meter runs them in its
    ledger thread. They change nothing the event loop can see: each returns a
    :class:`SessionChanges`, and the loop applies it to the one state object
    it owns (:class:`jupyter_gpu_meter.service.state.MeterState`) and queues
    the ledger writes. Which containers are metered is decided in one place:
    :attr:`label_filters` (what Docker is asked for) and :meth:`metered`.
    """

    def __init__(
        self,
        ledger,
        docker_api,
        pricing: Pricing,
        *,
        hub_id: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        node: str = "",
    ):
        self.ledger = ledger
        #: the node this tracker meters (a cluster's agent), "" on one host: its sessions
        #: carry it, and its reconcile reads and closes only its own node's sessions
        self.node = node
        self.docker = docker_api
        self.pricing = pricing
        #: this hub's id: another hub's containers on the same engine are not metered here
        self.hub_id = hub_id
        self.clock = clock

    # --- which containers this meter meters --------------------------------------

    #: Docker ``label`` filters for the container list and the event stream
    label_filters: tuple[str, ...] = (labels.MANAGED,)

    def metered(self, container_labels: dict) -> bool:
        """Is a container with these labels (or event attributes) one this meter meters?

        The GPU spawner's containers of this meter's hub (:func:`labels.of_hub`:
        with no hub id, made before containers carried one, they count too).
        """
        found = container_labels or {}
        return labels.MANAGED in found and (
            self.hub_id is None or labels.of_hub(found, self.hub_id)
        )

    # --- what Docker has ---------------------------------------------------

    def _inspect(self, container_id: str) -> ManagedContainer | None:
        from docker.errors import NotFound

        try:
            attrs = self.docker.inspect_container(container_id)
            return ManagedContainer.from_inspect(attrs, self.node)
        except NotFound:
            return None

    def _opening(self, container: ManagedContainer, started_at: datetime) -> Opening:
        price = container.price or self.pricing.snapshot(
            container.gpu_model, len(container.gpu_uuids)
        )
        return Opening(container, started_at, price)

    def reconcile(self) -> SessionChanges:
        """What it takes to bring the ledger in line with Docker (blocking; changes nothing).

        Running managed containers get an open session (started at Docker's
        StartedAt). Open sessions whose container is not running are closed at
        Docker's FinishedAt when the container still exists, or the FinishedAt
        the hub recorded when it removed the container (:func:`stopped_record`),
        else at the last time the meter saw it running; the reason says which.
        A recorded run the ledger has no session of (it started and stopped
        while no meter ran) gets its session, opened and closed at Docker's times.
        """
        summaries = self.docker.containers(all=True, filters={"label": list(self.label_filters)})
        running: dict[str, ManagedContainer] = {}
        for summary in summaries:
            # a paused container still holds its GPUs: its session goes on
            if summary.get("State") not in ("running", "paused", "restarting"):
                continue
            container = self._inspect(summary["Id"])
            if (
                container is not None
                and container.running
                and container.started_at
                and self.metered(_labels_of(summary))
            ):
                running[container.container_id] = container
        seen_at = self.clock()
        recorded = self._recorded_stops()

        closed = []
        open_ids = set()
        for session in self.ledger.open_sessions(node=self.node):
            open_ids.add(session.container_id)
            if session.container_id in running:
                continue
            container = self._inspect(session.container_id)
            stopped = recorded.get(session.container_id)
            if container is not None and container.finished_at:
                ended_at = container.finished_at
                reason = (
                    f"{reason_exited(container.exit_code)} "
                    "(found by reconcile: the meter missed the event)"
                )
            elif stopped is not None and stopped.finished_at:
                ended_at, reason = stopped.finished_at, reason_recorded(stopped.exit_code)
            else:
                ended_at = session.last_seen_at or session.started_at
                reason = REASON_GONE
            closed.append(Closing(session.container_id, ended_at, reason))
        reopened, ended_earlier = self._settle_lost(summaries, running)
        missed = [
            container
            for container_id, container in recorded.items()
            if container_id not in running
            and container_id not in open_ids
            and container.started_at
            and container.finished_at
            and self.ledger.get_session(container_id) is None
        ]
        return SessionChanges(
            opened=tuple(self._opening(c, c.started_at) for c in [*running.values(), *missed]),
            closed=(
                *closed,
                *(
                    Closing(c.container_id, c.finished_at, reason_recorded(c.exit_code))
                    for c in missed
                ),
            ),
            running=tuple(running.values()),
            seen_at=seen_at,
            reopened=reopened,
            ended_earlier=ended_earlier,
            forgotten=tuple(cid for cid in recorded if cid not in running),
        )

    def _recorded_stops(self) -> dict[str, ManagedContainer]:
        """The hub's records of the containers it stopped and removed that this meter
        meters (one host: in cluster mode the nodes' agents watch Docker)."""
        if self.node:
            return {}
        recorded = {}
        for container_id, record in self.ledger.stopped_containers().items():
            found = (record.get("Config") or {}).get("Labels") or {}
            if record.get("Id") != container_id:
                recorded[container_id] = _NOTHING_KNOWN  # not a record this code wrote
            elif self.metered(found):
                recorded[container_id] = ManagedContainer.from_inspect(record)
        return recorded

    def _settle_lost(self, summaries, running) -> tuple[tuple[str, ...], tuple[Closing, ...]]:
        """This node's "node lost" sessions of the containers Docker still has, settled
        from Docker's own times (cluster mode; nothing on one host).

        A container still running since the session's start: reopen (one session,
        never two). One that stopped before the session's end (the node's last
        heartbeat): its end moves back to Docker's FinishedAt. Any other keeps its
        end: never billed past the last heartbeat.
        """
        if not self.node:
            return (), ()
        known = [summary["Id"] for summary in summaries]
        reopened, earlier = [], []
        for session in self.ledger.node_lost_sessions(self.node, known):
            container = running.get(session.container_id)
            if container is not None and _same_start(container.started_at, session.started_at):
                reopened.append(session.container_id)
                continue
            container = container or self._inspect(session.container_id)
            finished = container.finished_at if container is not None else None
            if finished is not None and finished < session.ended_at:
                reason = reason_exited(container.exit_code)
                earlier.append(Closing(session.container_id, finished, reason))
        return tuple(reopened), tuple(earlier)

    def handle_event(self, event: dict) -> SessionChanges | None:
        """What one Docker container event (start, kill, die, destroy) changes; None: not
        a container this meter meters. Blocking (a start inspects the container)."""
        action = event.get("Action") or event.get("status")
        container_id = event.get("id") or (event.get("Actor") or {}).get("ID")
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        if not container_id or labels.MANAGED not in attributes:
            return None
        since = str(int(event.get("timeNano", 0)))
        if not self.metered(attributes):  # another hub's: seen, so not replayed again
            return SessionChanges(events_since_ns=since)
        at = _event_time(event)
        if action == "start":
            container = self._inspect(container_id)
            if container is None:  # already gone: build it from the event's labels
                container = ManagedContainer.from_inspect(
                    {"Id": container_id, "Config": {"Labels": attributes}, "State": {}}, self.node
                )
            # Docker's StartedAt and the event time are the same instant; prefer the event's
            return SessionChanges(opened=(self._opening(container, at),), events_since_ns=since)
        if action == "kill":
            signal = int(attributes.get("signal", 0) or 0)
            return SessionChanges(killed=(container_id, signal), events_since_ns=since)
        if action == "die":
            code = attributes.get("exitCode", "?")
            return SessionChanges(died=(container_id, at, code), events_since_ns=since)
        if action == "destroy":
            return SessionChanges(removed=(container_id, at), events_since_ns=since)
        return SessionChanges(events_since_ns=since)

    def events(self, since_ns: int | None = None, until_ns: int | None = None) -> Iterator[dict]:
        """Docker's managed-container events from `since_ns` (replaying those Docker still
        has) until `until_ns`, or on and on when `until_ns` is None."""

        def seconds(ns):
            # Docker takes "seconds.nanoseconds"; docker-py passes strings through
            return None if not ns else f"{ns // 10**9}.{ns % 10**9:09d}"

        return self.docker.events(
            since=seconds(since_ns),
            until=seconds(until_ns),
            filters={
                "type": "container",
                "label": list(self.label_filters),
                "event": list(EVENTS),
            },
            decode=True,
        )
