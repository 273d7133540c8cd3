"""GPUDockerSpawner end to end: a real hub, its proxy, Docker and containers.

Only the GPUs are simulated. Every check is one a user or an admin would make:
what the REST API answers, what `docker inspect` says, what the notebook user
sees inside the container.
"""

import itertools

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

MODEL = "Simulated GPU"


def device_ids(container):
    requests_ = container.attrs["HostConfig"].get("DeviceRequests") or []
    return [uuid for request in requests_ for uuid in request["DeviceIDs"]]


def assert_disjoint(held):
    all_uuids = list(itertools.chain.from_iterable(held.values()))
    assert len(all_uuids) == len(set(all_uuids)), f"a GPU was given twice: {held}"


def test_two_users_get_disjoint_gpus_and_see_only_their_own(make_hub):
    # The admin's environment and the image both say "all": neither may widen the set.
    hub = make_hub(
        "2",
        **{"GPUDockerSpawner.environment": {"NVIDIA_VISIBLE_DEVICES": "all"}},
    )
    for user in ("ada", "bob"):
        assert hub.start_server(user, {"gpus": 1}).status_code in (201, 202)
        assert hub.server_model(user)["ready"]

    held = hub.gpus_held()
    assert sorted(held) == ["ada/", "bob/"]
    assert_disjoint(held)
    for user in ("ada", "bob"):
        (uuid,) = held[f"{user}/"]
        container = hub.container_of(user)
        assert device_ids(container) == [uuid]
        request = container.attrs["HostConfig"]["DeviceRequests"][0]
        assert request["Driver"] == "nvidia" and request["Capabilities"] == [["gpu"]]
        inside = hub.seen_inside(user)
        assert inside["nvidia_visible_devices"] == uuid
        assert inside["cuda_visible_devices"] == uuid


def test_third_user_is_refused_then_starts_when_a_gpu_frees(make_hub):
    hub = make_hub("2")
    hub.start_many([("ada", {"gpus": 1}), ("bob", {"gpus": 1})])
    refused = hub.start_server("cyd", {"gpus": 1})
    assert refused.status_code == 503
    assert refused.json()["message"] == f"no free {MODEL}: 0 of 2 free"
    assert hub.server_model("cyd") is None

    freed = hub.gpus_held()["bob/"]
    hub.stop_server("bob")
    assert hub.start_server("cyd", {"gpus": 1}).status_code in (201, 202)
    assert hub.server_model("cyd")["ready"]
    assert hub.gpus_held()["cyd/"] == freed


def test_ten_concurrent_starts_on_four_gpus_never_share_a_gpu(make_hub):
    hub = make_hub("4")
    users = [f"user{i}" for i in range(10)]
    responses = hub.start_many([(user, {"gpus": 1}) for user in users])
    codes = sorted(r.status_code for r in responses)
    started = [u for u in users if (hub.server_model(u) or {}).get("ready")]
    assert len(started) == 4, (codes, [r.text for r in responses])
    assert codes.count(503) == 6
    held = hub.gpus_held()
    assert sorted(held) == sorted(f"{u}/" for u in started)
    assert_disjoint(held)
    assert len(set(itertools.chain.from_iterable(held.values()))) == 4


def test_hub_restart_keeps_the_allocation(make_hub):
    hub = make_hub("3")
    hub.start_many([("ada", {"gpus": 1}), ("bob", {"gpus": 1})])
    before = hub.gpus_held()

    hub.restart()
    assert hub.server_model("ada")["ready"] and hub.server_model("bob")["ready"]
    assert hub.gpus_held() == before

    responses = hub.start_many([("cyd", {"gpus": 1}), ("dan", {"gpus": 1})])
    assert sorted(r.status_code for r in responses)[-1] == 503
    held = hub.gpus_held()
    assert len(held) == 3
    assert_disjoint(held)


def test_container_killed_from_outside_frees_its_gpu(make_hub):
    hub = make_hub("1")
    hub.start_server("ada", {"gpus": 1})
    (uuid,) = hub.gpus_held()["ada/"]
    hub.container_of("ada").kill()

    assert hub.start_server("bob", {"gpus": 1}).status_code in (201, 202)
    assert hub.gpus_held()["bob/"] == [uuid]


def test_cpu_only_server_sees_no_gpu(make_hub):
    hub = make_hub("2")
    hub.start_server("ada", {"gpus": 0})
    container = hub.container_of("ada")
    assert device_ids(container) == []
    # the image says NVIDIA_VISIBLE_DEVICES=all; the spawner's "void" wins
    image_env = hub.docker.images.get(container.image.id).attrs["Config"]["Env"]
    assert "NVIDIA_VISIBLE_DEVICES=all" in image_env
    inside = hub.seen_inside("ada")
    assert inside["nvidia_visible_devices"] == "void"
    assert inside["cuda_visible_devices"] == ""
    assert inside["device_nodes"] == []
    assert hub.gpus_held() == {"ada/": []}


def test_container_is_hardened(make_hub):
    hub = make_hub("1", **{"GPUDockerSpawner.shm_size": "2G"})
    hub.start_server("ada", {"gpus": 1})
    container = hub.container_of("ada")
    host = container.attrs["HostConfig"]
    assert container.attrs["Config"]["User"] == "1000:100"
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Privileged"] is False
    assert host["PidsLimit"] == 4096
    assert host["ShmSize"] == 2 * 1024**3
    assert container.exec_run(["id", "-u"]).output.strip() == b"1000"
    shm = container.exec_run(["df", "-B1", "--output=size", "/dev/shm"]).output.split()
    assert int(shm[-1]) == 2 * 1024**3


@pytest.mark.parametrize(
    "options, message",
    [
        ({"gpus": -1}, "'gpus' must be a whole number from 0 to 2, got -1"),
        ({"gpus": "two"}, "'gpus' must be a whole number from 0 to 2, got 'two'"),
        ({"gpus": 3}, "'gpus' must be a whole number from 0 to 2, got 3"),
        ({"profile": "huge"}, "unknown profile 'huge'; available: cpu, gpu-1"),
        ({"gpus": 1, "gpu_model": "V100"}, f"unknown GPU model 'V100'; available: {MODEL}"),
        (
            {"gpus": 1, "env": {"NVIDIA_VISIBLE_DEVICES": "all"}},
            "unknown option(s) 'env'; allowed: "
            "gpus, gpu_model, profile, datasets, snapshot, image, template",
        ),
        (
            {"user_options": {"gpus": -1}},  # JupyterHub 6's body shape
            "'gpus' must be a whole number from 0 to 2, got -1",
        ),
    ],
)
def test_bad_choices_get_a_400_that_says_what_is_allowed(make_hub, options, message):
    hub = make_hub(
        "2",
        **{
            "GPUDockerSpawner.profile_list": [
                {"display_name": "CPU", "slug": "cpu"},
                {"display_name": "1 GPU", "slug": "gpu-1", "gpus": 1},
            ]
        },
    )
    response = hub.start_server("ada", options)
    assert response.status_code == 400
    assert response.json()["message"] == message
    assert hub.server_model("ada") is None
    assert hub.containers(all=True) == []


def test_named_servers_get_their_own_gpus_up_to_the_user_maximum(make_hub):
    hub = make_hub("3", **{"GPUDockerSpawner.max_gpus_per_user": 2})
    assert hub.start_server("ada", {"gpus": 1}, server="one").status_code in (201, 202)
    assert hub.start_server("ada", {"gpus": 1}, server="two").status_code in (201, 202)
    held = hub.gpus_held()
    assert sorted(held) == ["ada/one", "ada/two"]
    assert_disjoint(held)

    refused = hub.start_server("ada", {"gpus": 1}, server="three")
    assert refused.status_code == 400
    assert refused.json()["message"] == (
        "you hold 2 GPU(s) in other servers and asked for 1; at most 2 per user"
    )


def test_profile_limits_reach_docker(make_hub):
    hub = make_hub(
        "1",
        **{
            "GPUDockerSpawner.profile_list": [
                {"display_name": "Small", "slug": "small", "cpu_limit": 1.5, "mem_limit": "512M"},
            ]
        },
    )
    hub.start_server("ada", {})  # the only profile is the default
    host = hub.container_of("ada").attrs["HostConfig"]
    assert host["CpuQuota"] == 150_000 and host["CpuPeriod"] == 100_000
    assert host["Memory"] == 512 * 1024**2
    assert hub.container_of("ada").labels["jupyter-gpu-meter.profile"] == "small"


def test_a_start_the_budget_cannot_pay_the_first_increment_of_is_refused_at_the_door(
    make_hub, tmp_path
):
    # issue #11: 0.05 left, 3.60 per GPU-hour, billed per started minute: the first
    # minute costs 0.06, so the budget policy would stop the server at once
    from datetime import datetime, timezone

    from jupyter_gpu_meter.ledger import Ledger
    from tests.metering import set_money_budget

    url = f"sqlite:///{tmp_path}/ledger.sqlite"
    set_money_budget(url, "ada", "0.05")
    hub = make_hub(
        f"1x{MODEL}",
        **{
            "GPUDockerSpawner.ledger_url": url,
            "Pricing.prices": {MODEL: "3.60"},
            "Pricing.billing_increment": 60,
            "Budgets.minimum_start": 0,
        },
    )
    refused = hub.start_server("ada", {"gpus": 1})
    assert refused.status_code == 403
    assert refused.json()["message"] == (
        f"your budget (user ada) has 0.05 USD left this period: not enough to start "
        f"1 × {MODEL}, whose first 1 min costs 0.06 USD"
    )
    assert hub.server_model("ada") is None and hub.containers(all=True) == []
    # a cent more pays for that minute: the same start goes ahead
    with Ledger(url) as ledger:
        ledger.grant_budget(
            scope="user", name="ada", amount="0.01", by="test-admin", at=datetime.now(timezone.utc)
        )
    assert hub.start_server("ada", {"gpus": 1}).status_code in (201, 202)
    assert hub.wait_for("ada")
