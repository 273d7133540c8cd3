import os

import pytest
from hypothesis import settings

pytest_plugins = ["tests.fakenvml.plugin", "tests.cluster", "tests.cluster_agents"]

# Property and fuzz tests (hypothesis, schemathesis) try the same examples on
# every run, so a red run means the code changed, never the dice: a flaky CI
# run is worse than a narrower one. To explore further by hand:
#   HYPOTHESIS_PROFILE=explore scripts/test tests/test_api_fuzz.py
# No deadline: an example's time says how busy the machine is (two test workers, the
# cluster's build), not whether the code is right.
settings.register_profile("repeatable", derandomize=True, print_blob=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

# Set by scripts/test (and so in CI): a missing Docker engine or image fails the
# run instead of skipping the end-to-end tests.
REQUIRE_DOCKER = os.environ.get("JGM_REQUIRE_DOCKER") == "1"


def _unavailable(reason):
    if REQUIRE_DOCKER:
        pytest.fail(f"{reason} (JGM_REQUIRE_DOCKER=1); run scripts/test to set it up")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:
        _unavailable(f"no Docker engine: {e}")
    from tests.hub import IMAGE

    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        _unavailable(f"image {IMAGE} is missing; build it with scripts/build-images")
    return client


@pytest.fixture
def make_hub(tmp_path, docker_client, request):
    """Start a hub: make_hub(simulated_gpus="2", env=None, **{"GPUDockerSpawner.x": value});
    ``base_config``: a config file loaded first (for what JSON cannot hold, e.g. a callable)."""
    from tests.hub import Hub

    hubs = []

    def make(
        simulated_gpus="2", env=None, meter=False, meter_clock=False, base_config=None, **extra
    ):
        hub = Hub(
            tmp_path / f"hub{len(hubs)}",
            docker_client,
            simulated_gpus,
            env,
            meter=meter,
            meter_clock=meter_clock,
            base_config=base_config,
            **extra,
        )
        hubs.append(hub)
        return hub.start()

    yield make
    failed = getattr(request.node, "rep_call", None)
    for hub in hubs:
        if failed is not None and failed.failed:
            print(hub.logs())
            for container in hub.containers(all=True):
                print(f"--- container {container.name}\n", container.logs(tail=50).decode())
        hub.cleanup()


@pytest.fixture
def postgres_url():
    """A URL to a fresh schema of the test PostgreSQL (JGM_TEST_POSTGRES_URL), dropped after."""
    import uuid

    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    base = os.environ.get("JGM_TEST_POSTGRES_URL", "")
    if not base:
        if REQUIRE_DOCKER:
            pytest.fail("no JGM_TEST_POSTGRES_URL (JGM_REQUIRE_DOCKER=1); run scripts/test")
        pytest.skip("no PostgreSQL: run scripts/start-postgres and export JGM_TEST_POSTGRES_URL")
    schema = f"jgm_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    admin.dispose()  # a test may have restarted PostgreSQL under the pooled connection
    with admin.begin() as connection:
        connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def docker_times(docker_client):
    """Docker's own start/die times of managed containers, watched apart from the meter."""
    from tests.metering import DockerTimes

    watcher = DockerTimes(docker_client)
    yield watcher
    watcher.close()


def _in_xdist_worker() -> bool:
    return os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw")


def pytest_runtest_setup(item):
    if item.get_closest_marker("alone") and _in_xdist_worker():
        # beside other workers' tests it would pull the Docker engine or PostgreSQL from
        # under them; scripts/test runs these after the others, in one process
        pytest.skip("runs alone (it restarts what every test shares): run it without -n")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Order, and the groups pytest-xdist hands out whole (scripts/test: `-n 2 --dist loadgroup`).

    - The cluster tests share one Swarm: one group, one worker runs them one after another.
    - Every other test file is a group: its module fixtures (one hub for a file's tests)
      are made once and its tests run in their order.
    - Alone (no xdist) the cluster tests run last: scripts/test brings the cluster up in the
      background meanwhile. Under xdist they come first, then the files with slow tests,
      then the quick ones: one worker takes the cluster (waiting for it if it must, as its
      build keeps the CPU busy anyway) while the other works through the rest, and the
      quick files even out the end.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    for item in items:
        cluster = item.get_closest_marker("cluster") is not None
        group = "swarm-cluster" if cluster else item.path.relative_to(config.rootpath).as_posix()
        item.add_marker(pytest.mark.xdist_group(group))

    def alone_order(item):
        return item.get_closest_marker("cluster") is not None

    def xdist_order(item):
        return (item.get_closest_marker("cluster") is None, item.path not in slow_files)

    items.sort(key=xdist_order if _in_xdist_worker() else alone_order)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """Refuse a run whose xdist groups did not take: the cluster tests would run on both
    workers at once. pytest-xdist marks a test's group in its node id (`...@group`),
    which pytest 9.2 ignores (pytest-xdist#1386); here every test has a group."""
    if node.config.getvalue("dist") != "loadgroup":
        return
    lost = [nodeid for nodeid in ids if "@" not in nodeid.rsplit("]", 1)[-1]]
    if lost:
        pytest.exit(
            f"pytest-xdist did not group the tests ({lost[0]} has none; pytest-xdist#1386 "
            f"with pytest {pytest.__version__}): install pytest<9.2 (setup.cfg), or run "
            "without -n",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report
