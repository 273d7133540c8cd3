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
REASON_GONE = (
    "container gone while the meter was not watching: closed at the last time it was seen running"
)


def reason_exited(code) -> str:
    return f"exited with code {code}"


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

    @classmethod
    def from_inspect(cls, attrs: dict) -> ManagedContainer:
        found = (attrs.get("Config") or {}).get("Labels") or {}
        state = attrs.get("State") or {}
        try:
            price = PriceSnapshot.from_labels(found)
        except (KeyError, ValueError):
            price = None  # made by a spawner that did not label prices
        return cls(
            container_id=attrs["Id"],
            user=found.get(labels.USER, ""),
            server=found.get(labels.SERVER, ""),
            gpu_uuids=tuple(labels.gpus_from_labels(found)),
            gpu_model=found.get(labels.GPU_MODEL, ""),
            profile=found.get(labels.PROFILE, ""),
            price=price,
            running=bool(state.get("Running")),
            started_at=parse_docker_time(state.get("StartedAt", "")),
            finished_at=parse_docker_time(state.get("FinishedAt", "")),
            exit_code=state.get("ExitCode"),
        )


def _event_time(event: dict) -> datetime:
    if "timeNano" in event:
        seconds, nanos = divmod(int(event["timeNano"]), 1_000_000_000)
        return datetime.fromtimestamp(seconds, timezone.utc).replace(microsecond=nanos // 1000)
    return datetime.fromtimestamp(int(event["time"]), timezone.utc)


class SessionTracker:
    """Keeps the ledger's sessions in step with Docker's managed containers.

    Blocking (Docker and database calls): the service runs its methods off
    the event loop. `write` receives each ledger write as a callable, so the
    service can queue and retry it; by default writes run at once.
    """

    def __init__(
        self,
        ledger,
        docker_api,
        pricing: Pricing,
        *,
        write: Callable[[Callable[[], object]], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.ledger = ledger
        self.docker = docker_api
        self.pricing = pricing
        self.write = write or (lambda operation: operation())
        self.clock = clock
        #: container id -> ManagedContainer, for the containers running now
        self.running: dict[str, ManagedContainer] = {}
        #: container id -> the signal of the last kill event, until it dies
        self._kills: dict[str, int] = {}
        #: container id -> why a policy is stopping it ("GPUs idle for 30 min"), until it dies
        self.stop_reasons: dict[str, str] = {}

    # --- what Docker has ---------------------------------------------------

    def _inspect(self, container_id: str) -> ManagedContainer | None:
        from docker.errors import NotFound

        try:
            return ManagedContainer.from_inspect(self.docker.inspect_container(container_id))
        except NotFound:
            return None

    def gpu_owners(self) -> dict[str, str]:
        """GPU UUID -> container id of the running session that owns it."""
        return {
            uuid: container.container_id
            for container in self.running.values()
            for uuid in container.gpu_uuids
        }

    # --- opening and closing -----------------------------------------------

    def _open(self, container: ManagedContainer, started_at: datetime):
        price = container.price or self.pricing.snapshot(
            container.gpu_model, len(container.gpu_uuids)
        )
        self.running[container.container_id] = container
        self.write(
            lambda: self.ledger.open_session(
                container_id=container.container_id,
                user=container.user,
                server=container.server,
                gpu_uuids=list(container.gpu_uuids),
                gpu_model=container.gpu_model,
                profile=container.profile,
                price=price,
                started_at=started_at,
            )
        )

    def _close(self, container_id: str, ended_at: datetime, reason: str):
        self.running.pop(container_id, None)
        self._kills.pop(container_id, None)
        self.stop_reasons.pop(container_id, None)
        self.write(
            lambda: self.ledger.close_session(container_id, ended_at=ended_at, reason=reason)
        )

    def reconcile(self) -> tuple[list[str], list[str]]:
        """Bring the ledger in line with Docker; returns (opened, closed) container ids.

        Running managed containers get an open session (started at Docker's
        StartedAt). Open sessions whose container is not running are closed at
        Docker's FinishedAt when the container still exists, else at the last
        time the meter saw it running; the reason says which.
        """
        summaries = self.docker.containers(all=True, filters={"label": labels.MANAGED})
        running = {}
        for summary in summaries:
            # a paused container still holds its GPUs: its session goes on
            if summary.get("State") not in ("running", "paused", "restarting"):
                continue
            container = self._inspect(summary["Id"])
            if container is not None and container.running and container.started_at:
                running[container.container_id] = container
        opened = [cid for cid in running if cid not in self.running]
        for container in running.values():
            self._open(container, container.started_at)
        self.running = running
        now = self.clock()
        if running:
            self.write(lambda ids=list(running): self.ledger.touch_sessions(ids, now))

        closed = []
        for session in self.ledger.open_sessions():
            if session.container_id in running:
                continue
            container = self._inspect(session.container_id)
            if container is not None and container.finished_at:
                ended_at = container.finished_at
                reason = (
                    f"{reason_exited(container.exit_code)} "
                    "(found by reconcile: the meter missed the event)"
                )
            else:
                ended_at = session.last_seen_at or session.started_at
                reason = REASON_GONE
            self._close(session.container_id, ended_at, reason)
            closed.append(session.container_id)
        return opened, closed

    def handle_event(self, event: dict):
        """Apply one Docker container event (start, kill, die, destroy)."""
        action = event.get("Action") or event.get("status")
        container_id = event.get("id") or (event.get("Actor") or {}).get("ID")
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        if not container_id or labels.MANAGED not in attributes:
            return
        at = _event_time(event)
        if action == "start":
            container = self._inspect(container_id)
            if container is None:  # already gone: build it from the event's labels
                container = ManagedContainer.from_inspect(
                    {"Id": container_id, "Config": {"Labels": attributes}, "State": {}}
                )
            # Docker's StartedAt and the event time are the same instant; prefer the event's
            self._open(container, at)
        elif action == "kill":
            self._kills[container_id] = int(attributes.get("signal", 0) or 0)
        elif action == "die":
            signal = self._kills.get(container_id)
            if container_id in self.stop_reasons:
                reason = f"{REASON_STOPPED}: {self.stop_reasons[container_id]}"
            elif signal == 9:
                reason = REASON_KILLED
            elif signal:
                reason = REASON_STOPPED
            else:
                reason = reason_exited(attributes.get("exitCode", "?"))
            self._close(container_id, at, reason)
        elif action == "destroy" and container_id in self.running:
            self._close(container_id, at, "container removed")
        since = str(int(event.get("timeNano", 0)))
        self.write(lambda: self.ledger.set_state(EVENTS_SINCE_KEY, since))

    def events(self, since_ns: int | None = None, until_ns: int | None = None) -> Iterator[dict]:
        """Docker's managed-container events from `since_ns` (replaying those Docker still
        has) until `until_ns`, or on and on when `until_ns` is None."""

        def seconds(ns):
            # Docker takes "seconds.nanoseconds"; docker-py passes strings through
            return None if not ns else f"{ns // 10**9}.{ns % 10**9:09d}"

        return self.docker.events(
            since=seconds(since_ns),
            until=seconds(until_ns),
            filters={"type": "container", "label": labels.MANAGED, "event": list(EVENTS)},
            decode=True,
        )
