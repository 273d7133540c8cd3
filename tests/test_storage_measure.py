"""Measuring homes and snapshots on the real Docker engine, through the meter's own pass.

Each test makes labelled volumes of a hub id of its own (so it sees no one
else's), fills them from a container of the test image, drives
``MeterService.storage_pass`` with the times it chooses, and removes what it
made. Sizes are Docker's apparent sizes: a sparse 10 GB file costs no disk
here but is billed as 10 GB (see jupyter_gpu_meter.storage).
"""

import asyncio
import logging
import secrets
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import docker.errors
import pytest
from traitlets.config import Config

from jupyter_gpu_meter import homes
from jupyter_gpu_meter.clock import utcnow
from jupyter_gpu_meter.homes import HOME, SNAPSHOT, SNAPSHOT_OF, volume_labels
from jupyter_gpu_meter.pricing import round_money
from jupyter_gpu_meter.service.app import MeterService
from jupyter_gpu_meter.storage import Measured, plan_periods, volume_sizes
from tests.hub import IMAGE

pytestmark = pytest.mark.docker

GB = 10**9
HOUR = timedelta(hours=1)


class Volumes:
    """Labelled volumes of one test's own hub id, filled by a container; removed at the end."""

    def __init__(self, client):
        self.client = client
        self.hub_id = "jgmtest-st-" + secrets.token_hex(4)
        self.names = []

    def make(self, user, kind=HOME, *, name=None, created=None, **extra):
        name = name or f"{self.hub_id}-{kind}-{user}-{len(self.names)}"
        made = volume_labels(kind, user=user, hub_id=self.hub_id, created=created or utcnow())
        self.client.api.create_volume(name=name, labels={**made, **extra})
        self.names.append(name)
        return name

    def run(self, name, script):
        self.client.containers.run(
            IMAGE,
            ["sh", "-ec", script],
            user="0",
            network_mode="none",
            volumes={name: {"bind": "/v", "mode": "rw"}},
            remove=True,
            entrypoint=[],
        )

    def remove(self, name):
        self.client.api.remove_volume(name)

    def cleanup(self):
        for name in self.names:
            try:
                self.client.api.remove_volume(name, force=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture
def volumes(docker_client):
    made = Volumes(docker_client)
    yield made
    made.cleanup()


@pytest.fixture
def make_meter(tmp_path, volumes, docker_client):
    meters = []

    def make(**config):
        settings = {
            "HubIdentity": {"hub_id": volumes.hub_id},
            "Pricing": {"storage_price": "0.10", "currency": "USD"},
            **config,
            "HomeVolumes": {"helper_image": IMAGE, **config.get("HomeVolumes", {})},
        }
        meter = MeterService(
            db_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}", config=Config(settings)
        )
        meter.writer_id = "test"
        meter._setup(docker_api=docker_client.api, hub_api=object())
        meter.ledger.ensure_schema()
        meters.append(meter)
        return meter

    yield make
    for meter in meters:
        meter.ledger.close()


def soon():
    """A first pass's time: after the volumes' creation."""
    return utcnow() + timedelta(seconds=2)


def gb_hours(meter, user, **kwargs):
    return sum((s.gb_hours for s in meter.ledger.storage_sums(user=user, **kwargs)), Decimal(0))


def charge(meter, user, **kwargs):
    return sum((s.charge for s in meter.ledger.storage_sums(user=user, **kwargs)), Decimal(0))


def test_gb_hours_over_several_passes_match_size_times_time(make_meter, volumes):
    meter = make_meter()
    home = volumes.make("ada")
    snapshot = volumes.make("ada", SNAPSHOT, **{SNAPSHOT_OF: home})
    volumes.run(home, "head -c 50000000 /dev/urandom > /v/data; mkdir /v/d; echo hi > /v/d/x")
    volumes.run(snapshot, "head -c 20000000 /dev/urandom > /v/copy")
    t0 = soon()
    first = meter.storage_pass(t0)
    assert first.sizes == {home: ("ada", HOME, 50_000_003), snapshot: ("ada", SNAPSHOT, 20_000_000)}
    for hours in (1, 2, 3):
        meter.storage_pass(t0 + hours * HOUR)
    measured = gb_hours(meter, "ada", since=t0)
    expected = Decimal(70_000_003) / GB * 3
    assert abs(measured - expected) / expected < Decimal("0.05")
    # the ledger knows each volume's kind and size
    kinds = {p.volume: (p.kind, p.size_bytes) for p in meter.ledger.storage_now()[1]}
    assert kinds == {home: (HOME, 50_000_003), snapshot: (SNAPSHOT, 20_000_000)}


def test_a_period_is_billed_at_the_size_measured_at_its_end(make_meter, volumes):
    meter = make_meter()
    home = volumes.make("bob")
    t0 = soon()
    meter.storage_pass(t0)
    volumes.run(home, "head -c 1000000 /dev/zero > /v/a")
    meter.storage_pass(t0 + HOUR)
    periods = meter.ledger.storage_periods(user="bob", since=t0)
    assert [(p.started_at, p.ended_at, p.size_bytes) for p in periods] == [
        (t0, t0 + HOUR, 1_000_000)
    ]
    assert periods[0].price_per_gb_month == Decimal("0.10")


def test_a_server_mounting_the_volume_between_passes_leaves_no_gap(
    make_meter, volumes, docker_client
):
    """Docker's CreatedAt of a local volume moves to when a container mounts it; the
    volume's own label says when it was made, so billing goes on from the last pass."""
    t0 = utcnow() - 2 * HOUR
    home = volumes.make("lee", created=t0 - HOUR)
    meter = make_meter()
    meter.storage_pass(t0)
    volumes.run(home, "head -c 1000000 /dev/zero > /v/a")  # a server's mount, now
    moved = homes.parse_docker_time(docker_client.api.inspect_volume(home)["CreatedAt"])
    assert moved > t0 + HOUR  # Docker's "created" is the mount
    meter.storage_pass(t0 + 3 * HOUR)
    periods = meter.ledger.storage_periods(user="lee")
    assert [(p.ended_at, p.size_bytes) for p in periods] == [(t0, 0), (t0 + 3 * HOUR, 1_000_000)]
    assert periods[1].started_at == t0


def test_no_server_ten_sparse_gb_at_ten_cents_the_charge_grows(make_meter, volumes):
    meter = make_meter()
    home = volumes.make("cy")
    volumes.run(home, "truncate -s 10000000000 /v/big")  # 10 GB, apparent: no disk used
    t0 = soon()
    meter.storage_pass(t0)  # no container runs: storage is billed anyway
    seen = []
    for hours in (73, 146):
        meter.storage_pass(t0 + hours * HOUR)
        seen.append(round_money(charge(meter, "cy", since=t0), "USD"))
    assert seen == [Decimal("0.10"), Decimal("0.20")]  # 10 GB x 0.10 / 730 h x 73 h


def test_deleting_a_volume_stops_its_charge(make_meter, volumes):
    meter = make_meter()
    home = volumes.make("dee")
    volumes.run(home, "head -c 5000000 /dev/zero > /v/a")
    t0 = soon()
    meter.storage_pass(t0)
    meter.storage_pass(t0 + HOUR)
    before = charge(meter, "dee")
    assert before > 0
    volumes.remove(home)
    after = meter.storage_pass(t0 + 2 * HOUR)
    assert after.sizes == {}
    meter.storage_pass(t0 + 3 * HOUR)
    assert charge(meter, "dee") == before
    assert meter.ledger.storage_now() == (t0 + 3 * HOUR, [])


def test_a_restarted_meter_goes_on_from_the_ledger(make_meter, volumes):
    home = volumes.make("eve")
    volumes.run(home, "head -c 3000000 /dev/zero > /v/a")
    t0 = soon()
    make_meter().storage_pass(t0)
    volumes.run(home, "head -c 1000000 /dev/zero > /v/b")  # a new size: a new period
    again = make_meter()  # same ledger, a new process
    again.storage_pass(t0 + 5 * HOUR)
    periods = again.ledger.storage_periods(user="eve")
    assert [(p.ended_at, p.size_bytes) for p in periods] == [
        (t0, 3_000_000),
        (t0 + 5 * HOUR, 4_000_000),  # from where the ledger left off
    ]
    assert periods[-1].started_at == t0


def test_measurements_of_an_unchanged_volume_extend_one_row(make_meter, volumes):
    home = volumes.make("kim")
    volumes.run(home, "head -c 2000000 /dev/zero > /v/a")
    meter = make_meter()
    t0 = soon()
    for hours in range(4):
        meter.storage_pass(t0 + hours * HOUR)
    [period] = meter.ledger.storage_periods(user="kim")
    assert (period.ended_at, period.size_bytes) == (t0 + 3 * HOUR, 2_000_000)
    [total] = meter.ledger.storage_sums(user="kim", since=t0)
    assert total.gb_hours == Decimal("0.006")  # 2 MB x 3 h, exactly
    # a retried pass, or one that overlaps what is billed, adds nothing
    assert (
        meter.ledger.add_storage_periods(
            [replace(period, started_at=t0 + HOUR, ended_at=t0 + 2 * HOUR)], t0 + 3 * HOUR
        )
        == 0
    )
    assert meter.ledger.storage_sums(user="kim", since=t0) == [total]


def test_a_first_measurement_bills_at_most_one_interval_back(make_meter, volumes):
    meter = make_meter(MeterService={"storage_interval": 60})
    volumes.make("fay")
    later = utcnow() + 10 * HOUR  # the volume was made long before the meter first saw it
    meter.storage_pass(later)
    [period] = meter.ledger.storage_periods(user="fay")
    assert period.ended_at - period.started_at == timedelta(seconds=60)


def test_other_hubs_and_unlabelled_volumes_are_not_measured(make_meter, volumes, docker_client):
    meter = make_meter()
    mine = volumes.make("gus")
    other = f"{volumes.hub_id}-other"
    docker_client.api.create_volume(
        name=other,
        labels=volume_labels(HOME, user="gus", hub_id=volumes.hub_id + "-x", created=utcnow()),
    )
    volumes.names.append(other)
    plain = volumes.make("x", name=f"{volumes.hub_id}-plain")
    docker_client.api.remove_volume(plain)
    docker_client.api.create_volume(name=plain)
    assert set(meter.storage_pass(soon()).sizes) == {mine}


class UnknownSizes:
    """Docker's API, except that ``df`` cannot tell the size of one volume (as for a
    volume driver other than ``local``)."""

    def __init__(self, api, unknown):
        self.api, self.unknown = api, unknown

    def __getattr__(self, name):
        return getattr(self.api, name)

    def df(self):
        answer = self.api.df()
        for volume in answer["Volumes"]:
            if volume["Name"] == self.unknown:
                volume["UsageData"] = {"RefCount": 0, "Size": -1}
        return answer


def test_unknown_sizes_are_logged_and_not_billed_and_big_homes_warned(
    make_meter, volumes, docker_client, caplog
):
    # neither Docker's df nor a helper container can measure `remote`
    meter = make_meter(HomeVolumes={"size_warning": "1M", "helper_image": "jgm-test/none:0"})
    remote, big = volumes.make("hal"), volumes.make("ivy")
    nobody = volumes.make("")  # labelled by hand, without a user: billed to no one
    volumes.run(big, "head -c 2000000 /dev/zero > /v/a")
    meter.docker_api = UnknownSizes(docker_client.api, remote)
    meter.log.addHandler(caplog.handler)  # the application's logger does not propagate
    with caplog.at_level(logging.WARNING):
        asyncio.run(meter._measure_storage())
        asyncio.run(meter._measure_storage())  # warned once, not at every pass
    assert (
        "Measuring 1 volume(s) with a helper container failed: helper image 'jgm-test/none:0' "
        "not found" in caplog.text
    )
    assert "cannot tell the size of 1 volume(s), not billed" in caplog.text
    assert remote in caplog.text
    assert f"volume {nobody} is not billed: its user label: no user label" in caplog.text
    assert caplog.text.count(f"the home {big} of ivy holds 2000000 bytes") == 1
    assert meter.oversized == {big}
    assert meter.ledger.storage_periods(user="hal") == []
    assert {p.volume for p in meter.ledger.storage_periods()} == {big}  # the others still are
    meter.storage_executor.shutdown()
    meter.log.removeHandler(caplog.handler)


def test_a_volume_df_cannot_size_is_measured_by_a_helper_as_df_would(
    make_meter, volumes, docker_client
):
    """A volume plugin's (df says -1): measured in a helper container, counted as df counts."""
    meter = make_meter()
    remote, plain = volumes.make("hal"), volumes.make("ivy")
    script = (
        "head -c 1000 /dev/zero > /v/a && mkdir -p /v/d/e && head -c 2345 /dev/zero > /v/d/e/b "
        "&& ln /v/a /v/d/hard && ln -s ../a /v/d/soft && touch /v/empty"
    )
    volumes.run(remote, script)
    volumes.run(plain, script)
    meter.docker_api = UnknownSizes(docker_client.api, remote)
    result = meter.storage_pass(soon())
    by_df = volume_sizes(docker_client.api.df())[plain]
    assert by_df == 1000 + 2345 + len("../a")  # folders not counted, the hard link once
    assert result.sizes[remote] == ("hal", HOME, by_df)
    assert result.unknown == []
    assert [p.volume for p in meter.ledger.storage_periods(user="hal")] == [remote]


def test_a_local_volume_with_options_like_nfs_is_measured_by_a_helper(
    make_meter, volumes, docker_client, tmp_path
):
    """Docker's df leaves out every local volume with options (NFS): a bind of a folder here."""
    meter = make_meter()
    folder = tmp_path / "nfs-like"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"x" * 4321)
    name = f"{volumes.hub_id}-home-bound"
    docker_client.api.create_volume(
        name=name,
        driver="local",
        driver_opts={"type": "none", "o": "bind", "device": str(folder)},
        labels=volume_labels(HOME, user="jo", hub_id=volumes.hub_id, created=utcnow()),
    )
    volumes.names.append(name)
    assert name not in volume_sizes(docker_client.api.df())
    result = meter.storage_pass(soon())
    assert (result.sizes, result.unknown) == ({name: ("jo", HOME, 4321)}, [])
    assert [p.size_bytes for p in meter.ledger.storage_periods(user="jo")] == [4321]


def test_plan_periods_skips_what_cannot_be_billed():
    from jupyter_gpu_meter.homes import Volume

    now = utcnow()
    made = Volume("v", HOME, "ada", "h", now + HOUR, {})  # a clock behind Docker's
    assert (
        plan_periods(
            [Measured(made, 5)], {}, now=now, interval=HOUR, price_per_gb_month=0, currency="USD"
        )
        == []
    )
    assert volume_sizes({"Volumes": None}) == {}


def test_a_volume_made_again_since_its_last_period_is_billed_from_its_making():
    from jupyter_gpu_meter.homes import Volume

    now = utcnow()
    last = now - 2 * HOUR

    def start(volume):
        (period,) = plan_periods(
            [Measured(volume, 5)],
            {"v": last},
            now=now,
            interval=HOUR,
            price_per_gb_month=0,
            currency="USD",
        )
        return period.started_at

    mounted = now - HOUR  # Docker's CreatedAt of a volume a container mounted since
    assert start(Volume("v", HOME, "ada", "h", mounted, {}, made_at=now - 3 * HOUR)) == last
    assert start(Volume("v", HOME, "ada", "h", mounted, {})) == last  # made before the label
    assert start(Volume("v", HOME, "ada", "h", mounted, {}, made_at=mounted)) == mounted
    assert volume_sizes({"Volumes": [{"Name": "n", "UsageData": None}]}) == {"n": None}
