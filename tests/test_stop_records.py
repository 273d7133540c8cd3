"""The hub's records of stopped containers: what a meter that was down bills from them.

Docker replays only its last 256 events to a meter that comes back. The spawner
keeps Docker's times of each run in the ledger before it removes the container
(:class:`~jupyter_gpu_meter.spawner_meter.StopRecordMixin`); the meter's
reconcile bills from them what the engine forgot. The real MeterService and
ledger; Docker's API is test_meter_state's stand-in (tests/test_faults.py has
the real engine, hub and flood of events).
"""

from __future__ import annotations

import copy
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import docker.errors
import pytest

from jupyter_gpu_meter.clock import parse_docker_time, utcnow
from jupyter_gpu_meter.ledger import Ledger
from jupyter_gpu_meter.pricing import PriceSnapshot
from jupyter_gpu_meter.sessions import REASON_GONE, reason_recorded, stopped_record
from jupyter_gpu_meter.spawner_meter import StopRecordMixin, record_stop
from tests.test_meter_state import H100, T0, FakeDocker, db_url, docker_time, make_meter  # noqa: F401 (fixtures)

END = T0 + timedelta(minutes=10)


@pytest.fixture
async def meter(make_meter):  # noqa: F811 (the fixture imported above)
    meter = make_meter(clock=lambda: END + timedelta(minutes=5))
    await meter._in_ledger_thread(meter.ledger.ensure_schema)
    return meter


def stop_and_record(meter, container_id, at=END, code=0):
    """The hub's stop while the meter is down: its record, then the container removed
    and its events forgotten (never handed to the meter)."""
    docker = meter.docker_api
    attrs = copy.deepcopy(docker.attrs[container_id])
    attrs["State"].update(Running=False, FinishedAt=at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    attrs["State"]["ExitCode"] = code
    meter.ledger.record_stopped_container(container_id, stopped_record(attrs))
    del docker.attrs[container_id]


async def test_an_open_session_whose_container_went_ends_at_the_recorded_end(meter):
    await meter._handle_event(meter.docker_api.run("c1", at=T0))
    await meter._flush()
    stop_and_record(meter, "c1", code=143)
    await meter._reconcile()
    session = meter.ledger.get_session("c1")
    assert (session.started_at, session.ended_at) == (T0, END)
    assert session.end_reason == reason_recorded(143)
    assert "the meter missed the event" in session.end_reason
    assert meter.ledger.stopped_containers() == {}  # settled: forgotten
    assert meter.state.running == {}


async def test_a_run_the_meter_never_saw_gets_one_session_at_dockers_times(meter):
    price = PriceSnapshot(H100, 1, "2.49", "0.10", "USD")
    meter.docker_api.run("c1", user="bob", gpus=("GPU-1",), at=T0, price=price)  # unseen
    stop_and_record(meter, "c1")
    await meter._reconcile()
    await meter._reconcile()  # again: nothing twice
    (session,) = meter.ledger.sessions()
    assert (session.user, session.gpu_uuids) == ("bob", ("GPU-1",))
    assert (session.started_at, session.ended_at) == (T0, END)
    assert session.end_reason == reason_recorded(0)
    assert session.price == price  # the price its container carried
    assert session.charge(END) == Decimal("0.4150")  # 10 min at 2.49/h


async def test_without_a_record_the_end_is_the_last_time_the_meter_saw_it(meter):
    await meter._handle_event(meter.docker_api.run("c1", at=T0))
    await meter._flush()  # "seen running" at the meter's clock
    del meter.docker_api.attrs["c1"]
    await meter._reconcile()
    session = meter.ledger.get_session("c1")
    assert session.ended_at == END + timedelta(minutes=5)
    assert session.end_reason == REASON_GONE


async def test_the_record_of_a_run_the_meter_saw_end_is_forgotten_unchanged(meter):
    docker = meter.docker_api
    await meter._handle_event(docker.run("c1", at=T0))
    await meter._handle_event(docker.die("c1", END, code=0))
    stop_and_record(meter, "c1", at=END - timedelta(seconds=1))  # not what the ledger has
    await meter._reconcile()
    session = meter.ledger.get_session("c1")
    assert session.ended_at == END and session.end_reason == "exited with code 0"
    assert meter.ledger.stopped_containers() == {}


async def test_a_reconcile_that_closes_a_server_the_meter_stopped_keeps_its_reason(meter):
    """The reconcile can see the stopped container before the die event is handled."""
    docker_api = meter.docker_api
    await meter._handle_event(docker_api.run("c1", at=T0))
    meter.state.stop_reasons["c1"] = "GPU unhealthy (GPU-0: GPU is lost)"  # the policy's ask
    docker_api.die("c1", END)  # its event not handled yet
    await meter._reconcile()
    session = meter.ledger.get_session("c1")
    assert session.ended_at == END
    assert session.end_reason == "stopped: GPU unhealthy (GPU-0: GPU is lost)"


async def test_another_hubs_record_is_left_for_its_own_meter(meter):
    meter.docker_api.run("theirs", hub_id="another-hub", at=T0)
    stop_and_record(meter, "theirs")
    await meter._reconcile()
    assert meter.ledger.sessions() == []
    assert set(meter.ledger.stopped_containers()) == {"theirs"}


@pytest.mark.parametrize("value", ["not json", '["a list"]', '{"Id": "another-id"}'])
async def test_a_record_the_meter_cannot_read_bills_nothing_and_is_forgotten(meter, value):
    meter.ledger.set_state("stopped_container:c1", value)
    await meter._reconcile()
    assert meter.ledger.sessions() == []
    assert meter.ledger.stopped_containers() == {}


def test_a_record_keeps_no_environment_and_no_other_labels():
    docker = FakeDocker()
    docker.run("c1", at=T0)
    attrs = docker.inspect_container("c1")
    attrs["Config"]["Env"] = ["JUPYTERHUB_API_TOKEN=secret"]
    attrs["Config"]["Labels"]["org.opencontainers.image.title"] = "notebook"
    record = stopped_record(attrs)
    assert "secret" not in repr(record) and "opencontainers" not in repr(record)
    assert record["Config"]["Labels"] == docker.attrs["c1"]["Config"]["Labels"]


def test_the_ledger_refuses_a_record_without_a_container_id():
    with Ledger("sqlite://") as ledger:
        ledger.ensure_schema()
        with pytest.raises(ValueError, match="give Docker's id"):
            ledger.record_stopped_container("", {})
        with pytest.raises(ValueError, match="give Docker's id"):
            ledger.record_stopped_container("x" * 300, {})


def test_the_spawner_records_nothing_before_a_meter_made_the_ledger(tmp_path):
    assert record_stop(f"sqlite:///{tmp_path}/absent.sqlite", "c1", {}) is False
    assert not (tmp_path / "absent.sqlite").exists()


class DockerSpawnerPart:
    """DockerSpawner's part that the mixin wraps: inspect, stop, removal (`auto_remove`:
    the engine removes the container as it stops, as DockerSpawner's AutoRemove may)."""

    object_type = "container"
    object_name = "jupyter-ada"
    object_id = "c1"
    remove = True

    def __init__(self, ledger_url, attrs, auto_remove=False):
        self.ledger_url, self.attrs, self.auto_remove = ledger_url, attrs, auto_remove
        self.removed = False
        self.log = logging.getLogger("test-spawner")

    async def docker(self, method, name):
        assert (method, name) == ("inspect_container", "c1")
        if self.attrs is None:
            raise docker.errors.NotFound("No such container: c1")
        return copy.deepcopy(self.attrs)

    async def stop_object(self):
        self.attrs["State"].update(Running=False, FinishedAt=docker_time(END), ExitCode=143)
        if self.auto_remove:
            self.attrs = None

    async def remove_object(self):
        self.removed = True

    async def poll(self):
        """None while running, else a status (0: gone, its id forgotten)."""
        if self.attrs is None:
            self.object_id = ""
            return 0
        state = self.attrs["State"]
        return None if state["Running"] else f"ExitCode={state['ExitCode']}"


class Spawner(StopRecordMixin, DockerSpawnerPart):
    meter_executor = ThreadPoolExecutor(1)

    def __init__(self, *args, **kwargs):
        DockerSpawnerPart.__init__(self, *args, **kwargs)

    async def stop(self):
        """DockerSpawner.stop with ``remove``: stop, then remove."""
        await self.stop_object()
        await self.remove_object()


def running_attrs(container_id="c1"):
    docker_api = FakeDocker()
    docker_api.run(container_id, at=T0)
    return docker_api.inspect_container(container_id)


@pytest.fixture
def ledger_url(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.sqlite"
    with Ledger(url) as ledger:
        ledger.ensure_schema()
    return url


async def test_the_spawner_records_dockers_times_then_removes_the_container(ledger_url):
    spawner = Spawner(ledger_url, running_attrs())
    await spawner.stop()
    assert spawner.removed
    with Ledger(ledger_url) as ledger:
        (record,) = ledger.stopped_containers().values()
    assert record["State"]["FinishedAt"] == docker_time(END)
    assert record["State"]["ExitCode"] == 143


async def test_a_container_the_engine_removed_first_ends_when_docker_stop_returned(ledger_url):
    spawner = Spawner(ledger_url, running_attrs(), auto_remove=True)
    before = utcnow()
    await spawner.stop()
    after = utcnow()
    assert spawner.removed
    with Ledger(ledger_url) as ledger:
        (record,) = ledger.stopped_containers().values()
    finished = parse_docker_time(record["State"]["FinishedAt"])
    assert before <= finished <= after
    assert record["State"]["StartedAt"] == docker_time(T0) and record["State"]["ExitCode"] is None
    assert reason_recorded(None).startswith("stopped (from the hub's record")


def died_on_its_own(code=137):
    attrs = running_attrs()
    attrs["State"].update(Running=False, FinishedAt=docker_time(END), ExitCode=code)
    return attrs


async def test_a_server_the_hub_finds_dead_is_recorded_then_removed(ledger_url):
    """The hub never calls stop() for a server it polls as dead: the poll records it."""
    spawner = Spawner(ledger_url, died_on_its_own())
    assert await spawner.poll() == "ExitCode=137"
    assert spawner.removed
    with Ledger(ledger_url) as ledger:
        (record,) = ledger.stopped_containers().values()
    assert (record["State"]["FinishedAt"], record["State"]["ExitCode"]) == (docker_time(END), 137)


async def test_a_poll_removes_nothing_running_gone_or_kept(ledger_url):
    attrs = (running_attrs(), None, died_on_its_own())
    running, gone, kept = (Spawner(ledger_url, a) for a in attrs)
    kept.remove = False  # the admin keeps stopped containers (for `docker logs`)
    assert [await s.poll() for s in (running, gone, kept)] == [None, 0, "ExitCode=137"]
    assert not any(s.removed for s in (running, gone, kept))
    with Ledger(ledger_url) as ledger:
        assert ledger.stopped_containers() == {}


async def test_a_record_the_ledger_refuses_is_logged_and_the_container_removed(tmp_path, caplog):
    path = tmp_path / "not-a-ledger.sqlite"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE alembic_version (version_num TEXT)")
    connection.commit()
    spawner = Spawner(f"sqlite:///{path}", running_attrs())
    await spawner.stop()
    assert spawner.removed
    assert "Recording the stop of jupyter-ada in the ledger failed" in caplog.text


async def test_a_running_or_unknown_container_is_not_recorded(ledger_url):
    for attrs in (running_attrs(), None):  # removal without a stop: nothing stopped
        spawner = Spawner(ledger_url, attrs)
        await spawner.remove_object()
        assert spawner.removed
    with Ledger(ledger_url) as ledger:
        assert ledger.stopped_containers() == {}
