"""The meter's state, its one owner (the event loop), and failing closed.

The real MeterService pieces on a real ledger (SQLite, and PostgreSQL where
the test PostgreSQL runs); Docker's and the hub's API clients are stand-ins
injected through the constructor (MeterService._setup), as the policies'
tests inject the hub. No sleeps: every step is awaited.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import docker.errors
import pytest
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from jupyter_gpu_meter import labels, usage
from jupyter_gpu_meter.container import container_labels
from jupyter_gpu_meter.ledger import Ledger
from jupyter_gpu_meter.pricing import PriceSnapshot, Pricing
from jupyter_gpu_meter.service.app import MeterService
from jupyter_gpu_meter.service.metrics import exposition, metric_families
from jupyter_gpu_meter.service.policy_runner import UNBILLED_POLICY
from jupyter_gpu_meter.service.reader import LiveState
from jupyter_gpu_meter.service.state import MeterState
from jupyter_gpu_meter.sessions import REASON_KILLED, SessionTracker

H100 = "NVIDIA H100 80GB HBM3"
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
#: the test meter's hub
HUB_ID = "test-hub"


def docker_time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


class FakeDocker:
    """Docker's low-level API as the tracker uses it: containers, inspect, events."""

    def __init__(self):
        self.attrs: dict[str, dict] = {}

    def run(
        self,
        container_id,
        *,
        user="ada",
        server="",
        gpus=("GPU-0",),
        at=T0,
        price=None,
        hub_id=HUB_ID,
    ):
        found = container_labels(
            user=user,
            server=server,
            gpu_uuids=gpus,
            gpu_model=H100 if gpus else "",
            profile="p",
            hub_id=hub_id,
        )
        if hub_id is None:  # made before containers carried their hub's id
            del found[labels.HUB]
        if price is not None:
            found.update(price.to_labels())
        self.attrs[container_id] = {
            "Id": container_id,
            "Config": {"Labels": found},
            "State": {"Running": True, "StartedAt": docker_time(at), "FinishedAt": ""},
        }
        return self.event("start", container_id, at)

    def die(self, container_id, at, *, code=0, remove=False):
        state = self.attrs[container_id]["State"]
        state.update(Running=False, FinishedAt=docker_time(at), ExitCode=code)
        event = self.event("die", container_id, at, exitCode=str(code))
        if remove:
            del self.attrs[container_id]
        return event

    def event(self, action, container_id, at, **extra):
        found = (self.attrs.get(container_id) or {}).get("Config", {}).get("Labels", {})
        return {
            "Type": "container",
            "Action": action,
            "id": container_id,
            "Actor": {"ID": container_id, "Attributes": {**found, **extra}},
            "time": int(at.timestamp()),
            "timeNano": int(at.timestamp() * 1e9),
        }

    def containers(self, all=False, filters=None):  # noqa: A002 (docker-py's name)
        wanted = (filters or {}).get("label", [])
        return [
            {
                "Id": cid,
                "State": "running" if a["State"]["Running"] else "exited",
                "Labels": a["Config"]["Labels"],
            }
            for cid, a in self.attrs.items()
            if set(wanted) <= set(a["Config"]["Labels"])
        ]

    def inspect_container(self, container_id):
        if container_id not in self.attrs:
            raise docker.errors.NotFound(f"No such container: {container_id}")
        return copy.deepcopy(self.attrs[container_id])


class FakeHub:
    """The hub's API as the policy runner calls it; `refuse` maps a user to the error."""

    def __init__(self, refuse=None):
        self.refuse = refuse or {}
        self.stopped: list[tuple[str, str]] = []
        self.activity: list[str] = []
        self.groups_asked: list[str] = []

    def _check(self, user, call):
        error = self.refuse.get((user, call)) or self.refuse.get(user)
        if error is not None:
            raise error

    async def stop_server(self, user, server=""):
        self._check(user, "stop")
        self.stopped.append((user, server))
        return 202

    async def user_groups(self, user):
        self.groups_asked.append(user)
        self._check(user, "groups")
        return []

    async def report_activity(self, user, server, at):
        self._check(user, "activity")
        self.activity.append(user)


def not_found():
    return HTTPClientError(404, "Not Found")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def make_meter(db_url):
    meters = []

    def make(url=db_url, hub=None, config=None, **settings):
        config = Config({"HubIdentity": {"hub_id": HUB_ID}, **(config or {})})
        settings.setdefault("clock", lambda: T0 + timedelta(minutes=5))
        meter = MeterService(db_url=url, config=config, **settings)
        meter.writer_id = "test"
        meter._setup(docker_api=FakeDocker(), hub_api=hub or FakeHub())
        meters.append(meter)
        return meter

    yield make
    for meter in meters:
        meter.ledger_executor.shutdown()
        meter.ledger.close()


@pytest.fixture
async def meter(make_meter):
    meter = make_meter()
    await meter._in_ledger_thread(meter.ledger.ensure_schema)
    return meter


async def stops_done(meter):
    """Wait for the stops the meter started when the ledger refused a session."""
    await asyncio.gather(*meter._stops)


def snapshot(state: MeterState) -> dict:
    return copy.deepcopy(vars(state))


# --- one owner ------------------------------------------------------------------------


async def test_the_ledger_thread_changes_nothing_until_the_loop_applies_it(meter):
    """The old race: reconcile and events changed `running` in the ledger thread while
    the loop iterated it. Now they only return what changed; the state moves when the
    loop applies it."""
    docker, state = meter.docker_api, meter.state
    await meter._handle_event(docker.run("c1", at=T0))
    await meter._handle_event(docker.run("c2", user="bob", gpus=("GPU-1",), at=T0))
    assert set(state.running) == {"c1", "c2"}
    docker.die("c1", T0 + timedelta(minutes=1), remove=True)
    docker.run("c3", user="cy", gpus=("GPU-2",), at=T0 + timedelta(minutes=2))

    before = snapshot(state)
    changes = await meter._in_ledger_thread(meter.tracker.reconcile)
    died = await meter._in_ledger_thread(
        meter.tracker.handle_event, docker.die("c2", T0 + timedelta(minutes=3))
    )
    assert snapshot(state) == before  # the thread read Docker and the ledger, changed nothing
    assert not any(isinstance(value, dict) for value in vars(meter.tracker).values())

    meter._apply(changes)
    assert set(state.running) == {"c2", "c3"}
    meter._apply(died)
    assert set(state.running) == {"c3"}
    assert state.gpu_owners() == {"GPU-2": "c3"}


async def test_the_loop_words_why_a_session_ended(meter):
    docker, state = meter.docker_api, meter.state
    ledger = meter.ledger
    for cid in ("a", "b", "c", "d"):
        await meter._handle_event(docker.run(cid, user=cid, gpus=(), at=T0))
    at = T0 + timedelta(minutes=10)
    state.stop_reasons["a"] = "GPUs idle for 1 h"  # as the policy runner sets it
    await meter._handle_event(docker.event("kill", "a", at, signal="15"))
    await meter._handle_event(docker.die("a", at))
    await meter._handle_event(docker.event("kill", "b", at, signal="9"))
    await meter._handle_event(docker.die("b", at, code=137))
    await meter._handle_event(docker.event("kill", "c", at, signal="15"))
    await meter._handle_event(docker.die("c", at))
    await meter._handle_event(docker.die("d", at, code=3))
    reasons = {cid: ledger.get_session(cid).end_reason for cid in "abcd"}
    assert reasons == {
        "a": "stopped: GPUs idle for 1 h",
        "b": REASON_KILLED,
        "c": "stopped",
        "d": "exited with code 3",
    }
    assert state.running == {} and state.kills == {} and state.stop_reasons == {}
    assert ledger.get_session("a").ended_at == at


async def test_the_web_layer_reads_a_snapshot_it_cannot_change(meter):
    await meter._handle_event(meter.docker_api.run("c1", at=T0))
    live = LiveState(meter.state, health=meter.health)
    running = live.running()
    with pytest.raises(TypeError):
        running["c2"] = running["c1"]  # read-only
    await meter._handle_event(meter.docker_api.die("c1", T0 + timedelta(minutes=1)))
    assert set(running) == {"c1"}  # a snapshot: the loop's later changes do not show in it
    assert live.running() == {} and live.health()["running_sessions"] == 0


def test_which_containers_are_metered_is_decided_in_one_place():
    docker = FakeDocker()
    docker.run("mine", at=T0)
    docker.attrs["other"] = {
        "Id": "other",
        "Config": {"Labels": {"some.other": "1"}},
        "State": {"Running": True, "StartedAt": docker_time(T0)},
    }
    tracker = SessionTracker(Ledger("sqlite://"), docker, Pricing(prices={H100: "2.49"}))
    tracker.ledger.ensure_schema()
    assert tracker.handle_event(docker.event("start", "other", T0)) is None
    assert [o.container.container_id for o in tracker.reconcile().opened] == ["mine"]
    tracker.ledger.close()


# --- one clock ------------------------------------------------------------------------


class MovableClock:
    """A MeterService.clock a test moves."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_the_meter_times_all_it_records_with_its_one_clock(make_meter, capsys):
    """Samples, idleness, policy deadlines, decisions, "seen running", budgets, snapshots:
    the meter's now is MeterService.clock; a session's bounds stay Docker's."""
    clock = MovableClock(T0 + timedelta(hours=1))
    meter = make_meter(clock=clock, config={"GPUInventory": {"simulated": "1"}})
    logged = capsys.readouterr().err  # the application's own log
    assert "MeterService.clock is" in logged and "for tests only" in logged
    await meter._in_ledger_thread(meter.ledger.ensure_schema)
    (gpu,) = meter.inventory_source.discover().gpus
    await meter._handle_event(meter.docker_api.run("c1", gpus=(gpu.uuid,), at=T0))
    meter.ledger.set_budget(
        scope="user", name="ada", amount="2", unit="gpu-hours", period="month", by="t", at=T0
    )
    await meter._flush()
    assert meter.ledger.get_session("c1").started_at == T0  # Docker's time
    assert meter.ledger.get_session("c1").last_seen_at == clock.now
    assert Decimal(meter.budget_view("ada")["left"]["amount"]) == 1  # 1 GPU-hour by the clock
    assert meter.health()["last_policy_check"] is None
    await meter._open_sampler()  # simulated GPU: 0 %, idle from the first tick
    meter.policies.gpu_idle_timeout = 600

    await meter._tick()
    assert meter.state.last_tick.at == clock.now
    idle_since = clock.now
    clock.now = idle_since + timedelta(seconds=599)
    await meter._tick()
    await meter._check_policies()
    assert meter.runner.hub.stopped == []  # not before the deadline
    assert meter.health()["last_policy_check"] == usage.isoformat(clock.now)
    clock.now = idle_since + timedelta(seconds=600)
    await meter._tick()
    await meter._check_policies()
    assert meter.runner.hub.stopped == [("ada", "")]  # at it
    (decision,) = meter.ledger.decisions(user="ada")
    assert decision.at == clock.now and decision.reason == "GPUs idle for 10 min"
    clock.now = T0 + timedelta(hours=3)
    assert Decimal(meter.budget_view("ada")["left"]["amount"]) == 0
    assert meter.health()["last_policy_check"] == usage.isoformat(
        idle_since + timedelta(seconds=600)
    )
    from jupyter_gpu_meter.service.home_api import HomeService

    assert HomeService.from_meter(meter).clock is clock  # a snapshot's time


def test_a_clock_that_does_not_give_aware_utc_is_refused(make_meter):
    with pytest.raises(ValueError, match="must return a timezone-aware UTC datetime"):
        make_meter(clock=lambda: datetime(2026, 11, 30, 9, 0))  # naive
    with pytest.raises(ValueError, match="must return a timezone-aware UTC datetime"):
        make_meter(clock=lambda: "2026-11-30T09:00:00Z")


def test_the_default_clock_is_the_systems():
    from jupyter_gpu_meter.clock import utcnow

    assert MeterService().clock is utcnow


# --- fail closed ----------------------------------------------------------------------

#: a price the ledger's integer column refuses on both databases (2**63 > BIGINT/INTEGER)
UNSTORABLE = PriceSnapshot(H100, 1, "2.49", "0.10", "USD", billing_increment_s=2**63)


async def test_a_session_the_ledger_refuses_stops_its_server_and_is_counted(meter, caplog):
    docker, state, hub = meter.docker_api, meter.state, meter.runner.hub
    await meter._handle_event(docker.run("good", user="bob", gpus=("GPU-1",), at=T0))
    with caplog.at_level(logging.ERROR):
        await meter._handle_event(docker.run("bad", user="ada", server="x", price=UNSTORABLE))
        await meter.runner.run_once()
    assert meter.ledger.get_session("bad") is None
    assert "bad" in state.unbilled and state.stop_reasons["bad"].startswith("the ledger refused")
    assert hub.stopped == [("ada", "x")]  # through the hub's API; bob's server runs on
    health = meter.health()
    assert health["session_open_failures"] == 1 and health["unbilled_servers"] == 1
    error = health["last_session_open_failure"]
    # the class (and the database's code), never the SQL or its values
    assert error == "OverflowError" or error.startswith("sqlalchemy.exc.DataError (psycopg.")
    assert "2.49" not in str(health) and str(2**63) not in str(health)
    assert "The ledger refused to open the session of ada/x" in caplog.text
    text = exposition(metric_families(None, {}, health, ({}, {}))).decode()
    assert "jupyter_gpu_meter_session_open_failures_total 1.0" in text
    assert "jupyter_gpu_meter_unbilled_servers 1.0" in text
    (decision,) = meter.ledger.decisions(user="ada")
    assert (decision.policy, decision.outcome) == (UNBILLED_POLICY, "stopped")

    # the hub stops it: the die event ends the unbilled run; nothing is stopped twice
    await meter._handle_event(docker.die("bad", T0 + timedelta(seconds=5)))
    await meter._reconcile()
    await meter.runner.run_once()
    assert hub.stopped == [("ada", "x")]
    assert meter.health()["unbilled_servers"] == 0
    assert meter.health()["session_open_failures"] == 1
    assert meter.ledger.get_session("good").running


async def test_a_refused_session_is_stopped_even_in_a_dry_run(make_meter):
    meter = make_meter()
    meter.policies.dry_run = True
    await meter._in_ledger_thread(meter.ledger.ensure_schema)
    await meter._handle_event(meter.docker_api.run("bad", price=UNSTORABLE))
    await meter.runner.run_once()
    assert meter.runner.hub.stopped == [("ada", "")]


async def test_a_reconcile_that_finds_an_unstorable_server_stops_it_once(meter):
    docker = meter.docker_api
    docker.run("bad", user="ada", price=UNSTORABLE)  # started while the meter was away
    await meter._reconcile()
    await meter._reconcile()  # not tried, counted or stopped again
    await meter.runner.run_once()
    assert meter.runner.hub.stopped == [("ada", "")]
    assert meter.health()["session_open_failures"] == 1


@pytest.mark.parametrize(
    "user",
    ["ada\x00evil", "a" * 300],
    ids=["NUL", "longer than the column"],
)
async def test_names_postgresql_refuses_stop_the_server(make_meter, postgres_url, user):
    meter = make_meter(postgres_url)
    await meter._in_ledger_thread(meter.ledger.ensure_schema)
    await meter._handle_event(meter.docker_api.run("bad", user=user))
    await stops_done(meter)
    assert meter.health()["last_session_open_failure"].startswith("sqlalchemy.exc.DataError (")
    assert meter.runner.hub.stopped == [(user, "")]  # the first stop, right after the failure
    assert user not in str(meter.health())


async def test_a_failed_stop_is_tried_again_and_counted(meter):
    hub = meter.runner.hub
    hub.refuse["ada"] = web.HTTPError(502, "the hub failed")
    await meter._handle_event(meter.docker_api.run("bad", price=UNSTORABLE))
    await stops_done(meter)
    assert hub.stopped == [] and "bad" not in meter.state.stop_reasons
    assert meter.health()["policy_errors"] == 1
    del hub.refuse["ada"]
    await meter.runner.run_once()
    assert hub.stopped == [("ada", "")]


@pytest.fixture
def unreachable(request, tmp_path):
    """A ledger that is down: PostgreSQL that does not answer, or SQLite locked."""
    if request.param == "postgresql":
        yield "postgresql+psycopg://jgm:jgm@127.0.0.1:1/jgm_test", None
        return
    import sqlite3

    path = tmp_path / "ledger.sqlite"
    url = f"sqlite:///{path}"
    Ledger(url).ensure_schema()
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("BEGIN EXCLUSIVE")
    yield url, connection
    connection.close()


@pytest.mark.parametrize("unreachable", ["sqlite", "postgresql"], indirect=True)
async def test_a_ledger_that_is_down_stops_no_server(make_meter, unreachable):
    url, lock = unreachable
    meter = make_meter(url)
    meter.ledger.engine.dispose()
    meter.ledger = meter.tracker.ledger = Ledger(url, lock_timeout=0.1)  # locked: answer at once
    await meter._handle_event(meter.docker_api.run("c1", at=T0))
    await meter.runner.run_once()
    assert meter.runner.hub.stopped == []
    health = meter.health()
    assert health["session_open_failures"] == 0 and health["unbilled_servers"] == 0
    assert health["pending_writes"] >= 1  # kept for the next flush
    if lock is not None:  # the database is back: the session is opened as it started
        lock.execute("ROLLBACK")
        await meter._flush()
        assert meter.ledger.get_session("c1").started_at == T0
        assert meter.health()["pending_writes"] == 0


# --- one user's bad data stops nobody else's policies ------------------------------


async def test_a_user_the_hub_does_not_know_stops_nobody_elses_budget(meter):
    hub = meter.runner.hub
    hub.refuse[("ghost", "groups")] = not_found()  # renamed or deleted in the hub
    hub.refuse[("ghost", "stop")] = web.HTTPError(404, "no such user")
    for user in ("ghost", "ada"):
        meter.ledger.set_budget(
            scope="user", name=user, amount="0", unit="gpu-hours", period="month", by="t", at=T0
        )
    meter.policies.budgets.grace = 0
    await meter._handle_event(meter.docker_api.run("g1", user="ghost", at=T0))
    await meter._handle_event(meter.docker_api.run("a1", user="ada", gpus=("GPU-1",), at=T0))
    await meter.runner.run_once()
    assert hub.stopped == [("ada", "")]  # the ghost's own budget still applied; its stop failed
    health = meter.health()
    assert health["policy_errors"] == 2  # the groups lookup and the stop
    assert health["last_policy_error"] == "tornado.web.HTTPError"
    (decision,) = meter.ledger.decisions(user="ghost")
    assert decision.outcome.startswith("failed")
    text = exposition(metric_families(None, {}, health, ({}, {}))).decode()
    assert "jupyter_gpu_meter_policy_errors_total 2.0" in text


async def test_a_policy_that_raises_for_one_server_leaves_the_others_checked(meter, caplog):
    def picky_idle(*, server, now, timeout, **kwargs):
        if server.user == "ghost":
            raise KeyError(server.user)
        return None

    meter.policies.gpu_idle_policy = picky_idle
    meter.policies.max_age = 60
    await meter._handle_event(meter.docker_api.run("g1", user="ghost", at=T0))
    await meter._handle_event(meter.docker_api.run("a1", user="ada", gpus=("GPU-1",), at=T0))
    with caplog.at_level(logging.WARNING):
        await meter.runner.run_once()
    assert meter.runner.hub.stopped == [("ada", "")]  # max age, past ghost's failure
    assert meter.health()["policy_errors"] == 1
    assert meter.health()["last_policy_error"] == "KeyError"  # a builtin: no module
    assert "checking ghost/ failed (KeyError" in caplog.text


async def test_a_budget_check_that_fails_for_one_user_leaves_the_others(meter):
    async def budget_of(user, groups, now):
        if user == "ghost":
            raise RuntimeError("the ledger could not read ghost's budget")
        return await meter._budget_of(user, groups, now)

    meter.runner.budget_of = budget_of
    meter.ledger.set_budget(
        scope="user", name="ada", amount="0", unit="gpu-hours", period="month", by="t", at=T0
    )
    meter.policies.budgets.grace = 0
    await meter._handle_event(meter.docker_api.run("g1", user="ghost", at=T0))
    await meter._handle_event(meter.docker_api.run("a1", user="ada", gpus=("GPU-1",), at=T0))
    await meter.runner.run_once()
    assert meter.runner.hub.stopped == [("ada", "")]
    assert meter.health()["last_policy_error"] == "RuntimeError"


async def test_keeping_one_server_alive_fails_alone(meter):
    hub = meter.runner.hub
    hub.refuse[("ghost", "activity")] = HTTPClientError(500, "hub error")
    meter.policies.gpu_idle_timeout = 0
    for cid, user in (("g1", "ghost"), ("a1", "ada")):
        await meter._handle_event(meter.docker_api.run(cid, user=user, at=T0))
        meter.runner.activity[cid] = (None, T0 + timedelta(minutes=4))  # busy a minute ago
    await meter.runner.run_once()
    assert hub.activity == ["ada"]
    assert meter.health()["policy_errors"] == 1


async def test_another_hubs_containers_are_not_metered_but_their_events_are_seen(meter):
    docker = meter.docker_api
    await meter._handle_event(docker.run("theirs", user="bob", hub_id="staging", at=T0))
    await meter._handle_event(docker.run("legacy", user="cyd", hub_id=None, at=T0))
    at = T0 + timedelta(minutes=1)
    await meter._handle_event(docker.run("mine", user="ada", at=at))
    later = T0 + timedelta(minutes=2)
    await meter._handle_event(docker.die("theirs", later))
    assert set(meter.state.running) == {"legacy", "mine"}
    # the other hub's last event moved the replay marker: a restart does not replay it
    assert meter.state.events_since_ns == int(later.timestamp() * 1e9)
    await meter._reconcile()
    sessions = await meter._in_ledger_thread(meter.ledger.sessions)
    assert {s.user for s in sessions} == {"ada", "cyd"}
