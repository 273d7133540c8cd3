"""Dataset definitions, the datasets option and the read-only mounts: pure, no Docker."""

from types import SimpleNamespace

import pytest
from jupyterhub import orm
from tornado import web
from traitlets.config import Config

from jupyter_gpu_meter.choice import ChoiceError, parse_profiles, resolve_choice
from jupyter_gpu_meter.container import (
    ContainerRefused,
    Hardening,
    enforce_create_kwargs,
    writable_mounts,
)
from jupyter_gpu_meter.datasets import (
    DATASET,
    DATASET_NAME,
    Dataset,
    Datasets,
    add_dataset_mounts,
    dataset_mounts,
    parse_definitions,
)
from jupyter_gpu_meter.homes import VOLUME_KIND
from jupyter_gpu_meter.hubconfig import check_config
from jupyter_gpu_meter.spawner import GPUDockerSpawner

NFS = {"type": "nfs", "o": "addr=10.0.0.5,ro,nfsvers=4", "device": ":/export/imagenet"}


def parse(definitions):
    return {dataset.name: dataset for dataset in parse_definitions(definitions)}


# --- definitions that work --------------------------------------------------------------


def test_each_kind_of_definition():
    found = parse(
        {
            "mnist": {"volume": "an-existing-volume", "description": "Handwritten digits"},
            "demo": {"path": "/srv/datasets//demo/", "description": "A local folder"},
            "imagenet": {"driver": "local", "driver_opts": NFS},
            "coco": {"s3": "s3://my-bucket/coco/2017/", "driver_opts": {"s3-provider": "AWS"}},
            "plugin": {"driver": "rclone", "driver_opts": {"remote": "mys3:bucket"}},
            "named": {"path": "/srv/named", "volume": "my-dataset-volume"},
        }
    )
    assert list(found) == ["mnist", "demo", "imagenet", "coco", "plugin", "named"]
    assert found["mnist"] == Dataset("mnist", "Handwritten digits", "an-existing-volume", False)
    demo = found["demo"]
    assert (demo.volume, demo.create, demo.driver) == (
        "jupyter-gpu-meter-dataset-demo",
        True,
        "local",
    )
    assert demo.driver_opts == {"type": "none", "o": "bind", "device": "/srv/datasets/demo"}
    assert demo.volume_labels == {VOLUME_KIND: DATASET, DATASET_NAME: "demo"}
    assert found["imagenet"].driver_opts == NFS
    assert found["coco"].driver == "rclone"
    assert found["coco"].driver_opts == {
        "type": "s3",
        "path": "my-bucket/coco/2017",
        "read-only": "true",
        "allow-other": "true",
        "s3-provider": "AWS",
    }
    assert found["plugin"].driver_opts == {"remote": "mys3:bucket"}
    assert found["named"].volume == "my-dataset-volume"


def test_s3_through_another_plugin_and_a_whole_bucket():
    (coco,) = parse_definitions({"coco": {"s3": "my-bucket", "driver": "my/s3-plugin:1.2"}})
    assert coco.driver == "my/s3-plugin:1.2" and coco.driver_opts["path"] == "my-bucket"


def test_no_datasets_is_fine():
    assert parse_definitions({}) == ()
    assert Datasets().datasets == ()


# --- definitions that are refused, with what is allowed ---------------------------------


@pytest.mark.parametrize(
    "name", ["", "Bad name", ".", "..", "-x", "_x", "a/b", "a" * 64, "ü", 7, "x\n"]
)
def test_dataset_names_become_folders_so_they_are_restricted(name):
    with pytest.raises(ValueError, match=r"dataset name .* is not allowed: it becomes the folder"):
        parse_definitions({name: {"path": "/srv/x"}})


@pytest.mark.parametrize(
    "definitions, message",
    [
        ([], r"must be a dict of dataset name -> definition; for example"),
        ({"d": "/srv/x"}, r"\['d'\]: expected a dict with one of 'volume', 'path'"),
        ({"d": {"path": "/srv", "mode": "rw"}}, r"unknown key\(s\) 'mode'; allowed: description"),
        ({"d": {"path": "/srv/x", "description": 3}}, r"'description' must be text, got 3"),
        ({"d": {"description": "x"}}, r"missing: one of 'volume', 'path', 'driver' or 's3'"),
        ({"d": {"path": "/srv/x", "driver": "local"}}, r"one of .*, not 'path' and 'driver'"),
        ({"d": {"path": "/srv/x", "s3": "s3://bucket"}}, r"not 'path' and 's3'"),
        ({"d": {"volume": "-bad"}}, r"'volume' '-bad' is not a Docker volume name"),
        ({"d": {"volume": "v", "driver_opts": {"o": "x"}}}, r"'driver_opts' needs a 'driver'"),
        ({"d": {"path": "/srv/x", "driver_opts": {"o": "x"}}}, r"'path' takes no 'driver_opts'"),
        ({"d": {"path": "srv/x"}}, r"'path' 'srv/x' must be an absolute host folder"),
        ({"d": {"path": 5}}, r"'path' 5 must be an absolute host folder"),
        ({"d": {"driver": "bad driver"}}, r"'driver' 'bad driver' is not a volume driver name"),
        ({"d": {"driver": "x", "driver_opts": "o=ro"}}, r"'driver_opts' 'o=ro' must map"),
        ({"d": {"driver": "x", "driver_opts": {"o": True}}}, r"must map option names to strings"),
        ({"d": {"driver": "local"}}, r"the local driver needs 'driver_opts' with a 'device'"),
        (
            {"d": {"driver": "local", "driver_opts": {"type": "none", "o": "bind", "device": "x"}}},
            r"'device' 'x' must be an absolute host folder",
        ),
        ({"d": {"s3": "s3://No_Such"}}, r"'s3' 's3://No_Such': give 's3://<bucket>/<prefix>'"),
        ({"d": {"s3": 42}}, r"'s3' 42: give 's3://<bucket>/<prefix>'"),
        ({"d": {"s3": "s3://bucket/a/../b"}}, r"the prefix may not hold empty, '.' or '..' parts"),
        (
            {"a": {"volume": "shared"}, "b": {"path": "/srv/b", "volume": "shared"}},
            r"'a' and 'b' both use the Docker volume 'shared'",
        ),
    ],
)
def test_bad_definitions_say_what_is_allowed(definitions, message):
    with pytest.raises(ValueError, match=message):
        parse_definitions(definitions)


@pytest.mark.parametrize(
    "path, what",
    [
        ("/", "the host's /, /dev, /proc or /sys"),
        ("/proc", "the host's /, /dev, /proc or /sys"),
        ("/sys/fs/cgroup", "the host's /, /dev, /proc or /sys"),
        ("/dev/../dev/sda", "the host's /, /dev, /proc or /sys"),
        ("/var/run/docker.sock", "Docker engine's socket or data"),
        ("/var/run", "Docker engine's socket or data"),
        ("/var/lib/docker/volumes", "Docker engine's socket or data"),
    ],
)
def test_host_folders_that_reach_the_host_are_refused(path, what):
    for definition in (
        {"path": path},
        {"driver": "local", "driver_opts": {"type": "none", "o": "bind", "device": path}},
        {"driver": "local", "driver_opts": {"type": "ext4", "device": path}},
        {"driver": "some-plugin", "driver_opts": {"device": path}},
    ):
        with pytest.raises(ValueError, match=rf"would give notebooks .*{what}"):
            parse_definitions({"d": definition})


def test_the_hub_refuses_bad_definitions_when_it_loads_its_config():
    c = Config()
    c.Datasets.definitions = {"demo": {"path": "/var/run/docker.sock"}}
    with pytest.raises(ValueError, match=r"\['demo'\]: 'path' '/var/run/docker.sock' would give"):
        Datasets(config=c)
    with pytest.raises(ValueError, match=r"Docker engine's socket"):
        check_config(c)
    c.Datasets.definitions = {"demo": {"path": "/srv/demo"}}
    check_config(c)
    assert [dataset.name for dataset in Datasets(config=c).datasets] == ["demo"]


# --- the mounts --------------------------------------------------------------------------


DEMO, COCO = parse_definitions({"demo": {"path": "/srv/demo"}, "coco": {"volume": "coco-volume"}})


def test_datasets_are_mounted_read_only_under_the_home_on_a_tmpfs():
    assert dataset_mounts([], "/home/jovyan") == ([], {})
    mounts, tmpfs = dataset_mounts([DEMO, COCO], "/home/jovyan")
    assert mounts == [
        {
            "Type": "volume",
            "Source": "jupyter-gpu-meter-dataset-demo",
            "Target": "/home/jovyan/datasets/demo",
            "ReadOnly": True,
            "VolumeOptions": {"NoCopy": True},
        },
        {
            "Type": "volume",
            "Source": "coco-volume",
            "Target": "/home/jovyan/datasets/coco",
            "ReadOnly": True,
            "VolumeOptions": {"NoCopy": True},
        },
    ]
    assert tmpfs == {"/home/jovyan/datasets": "mode=0755,size=64k"}


def test_mounts_join_the_admins_and_never_clash_with_them():
    host = {"Binds": ["home-ada:/home/jovyan:rw"], "Mounts": [{"Target": "/scratch"}]}
    assert add_dataset_mounts(host, [], "/home/jovyan") == host
    joined = add_dataset_mounts({**host, "Tmpfs": {"/tmp": ""}}, [DEMO], "/home/jovyan")
    assert joined["Binds"] == host["Binds"]
    assert [mount["Target"] for mount in joined["Mounts"]] == [
        "/scratch",
        "/home/jovyan/datasets/demo",
    ]
    assert joined["Tmpfs"] == {"/tmp": "", "/home/jovyan/datasets": "mode=0755,size=64k"}
    for clash in (
        {"Binds": ["mine:/home/jovyan/datasets/:ro"]},
        {"Mounts": [{"Target": "/home/jovyan/datasets/demo"}]},
        {"Tmpfs": {"/home/jovyan/datasets": ""}},
    ):
        with pytest.raises(ContainerRefused, match=r"mounts something at /home/jovyan/datasets"):
            add_dataset_mounts(clash, [DEMO], "/home/jovyan")


@pytest.mark.parametrize(
    "host_config, found",
    [
        ({"Binds": ["coco-volume:/data"]}, ["coco-volume at /data"]),
        ({"Binds": ["coco-volume:/data:rw"]}, ["coco-volume at /data"]),
        ({"binds": ["coco-volume:/data:z"]}, ["coco-volume at /data"]),
        ({"Mounts": [{"Source": "coco-volume", "Target": "/d"}]}, ["coco-volume at /d"]),
        (
            {"mounts": [{"source": "coco-volume", "target": "/d", "readonly": 1}]},
            ["coco-volume at /d"],
        ),
        ({"Binds": ["coco-volume:/data:ro"]}, []),
        ({"Binds": ["coco-volume:/data:ro,z"]}, []),
        ({"Mounts": [{"Source": "coco-volume", "Target": "/d", "ReadOnly": True}]}, []),
        ({"Binds": ["other:/data:rw"], "Mounts": ["not a mount"]}, []),
    ],
)
def test_a_dataset_volume_is_never_mounted_writable(host_config, found):
    assert writable_mounts(host_config, frozenset({"coco-volume"})) == found
    hardening = Hardening(read_only_volumes=frozenset({"coco-volume"}))
    kwargs = {"host_config": host_config}
    if found:
        with pytest.raises(ContainerRefused, match=rf"would mount {found[0]} writable"):
            enforce_create_kwargs(kwargs, gpu_uuids=[], container_labels={}, hardening=hardening)
    else:
        enforce_create_kwargs(kwargs, gpu_uuids=[], container_labels={}, hardening=hardening)


def test_unsafe_settings_are_still_refused_next_to_datasets():
    host = add_dataset_mounts({"Binds": ["/var/run/docker.sock:/sock"]}, [DEMO], "/home/jovyan")
    with pytest.raises(ContainerRefused, match=r"docker_engine"):
        enforce_create_kwargs(
            {"host_config": host},
            gpu_uuids=[],
            container_labels={},
            hardening=Hardening(read_only_volumes=frozenset({DEMO.volume})),
        )


# --- what users ask for --------------------------------------------------------------------

PROFILES = parse_profiles([{"display_name": "1 GPU", "slug": "gpu-1", "gpus": 1}])


def resolve(options, datasets=("demo", "coco")):
    return resolve_choice(options, profiles=PROFILES, models={"L4": 2}, datasets=datasets)


def test_datasets_go_with_a_profile_or_a_count_or_alone():
    assert resolve({"profile": "gpu-1", "datasets": ["coco", "demo"]}).datasets == (
        "coco",
        "demo",
    )
    choice = resolve({"gpus": 2, "datasets": ["demo"]})
    assert (choice.gpus, choice.datasets) == (2, ("demo",))
    choice = resolve({"datasets": ["demo"]})  # the default profile, with a dataset
    assert (choice.profile, choice.datasets) == ("gpu-1", ("demo",))
    assert resolve({"datasets": []}).datasets == ()
    assert resolve({"profile": "gpu-1"}).datasets == ()
    assert resolve({"user_options": {"datasets": ["coco"]}}).datasets == ("coco",)


@pytest.mark.parametrize(
    "value, message",
    [
        (
            "demo",
            r"'datasets' must be a list of dataset names, e\.g\. \[\"imagenet\"\], got 'demo'",
        ),
        ({"demo": True}, r"'datasets' must be a list of dataset names"),
        ([1], r"'datasets' holds 1, which is not a dataset name; available: demo, coco"),
        ([None], r"'datasets' holds None"),
        (["demo", "demo"], r"'datasets' names 'demo' twice"),
        (["demo", "imagenet", "x"], r"unknown dataset\(s\) 'imagenet', 'x'; available: demo, coco"),
    ],
)
def test_bad_dataset_choices_say_what_exists(value, message):
    with pytest.raises(ChoiceError, match=message):
        resolve({"profile": "gpu-1", "datasets": value})


def test_no_datasets_defined_says_none():
    with pytest.raises(ChoiceError, match=r"unknown dataset\(s\) 'demo'; available: none"):
        resolve({"datasets": ["demo"]}, datasets=())


def test_the_form_posts_ticked_datasets_with_the_gpu_choice():
    form = GPUDockerSpawner._options_from_form
    assert form({"profile": ["gpu-1"], "datasets": ["demo", " coco "]}) == {
        "profile": "gpu-1",
        "datasets": ["demo", "coco"],
    }
    assert form({"gpus": ["1"], "datasets": ["demo"]}) == {"gpus": "1", "datasets": ["demo"]}
    assert form({"gpus": ["1"]}) == {"gpus": "1"}  # nothing ticked: no datasets


# --- profiles may restrict which datasets they mount --------------------------------------

RESTRICTED = parse_profiles(
    [
        {"display_name": "CPU only", "slug": "cpu", "datasets": []},
        {"display_name": "1 GPU", "slug": "gpu-1", "gpus": 1, "datasets": ["demo"]},
        {"display_name": "Any", "slug": "any", "default": True},
    ]
)


def test_a_profile_mounts_only_the_datasets_it_allows():
    def pick(options):
        return resolve_choice(
            options, profiles=RESTRICTED, models={"L4": 2}, datasets=("demo", "coco")
        )

    assert pick({"profile": "gpu-1", "datasets": ["demo"]}).datasets == ("demo",)
    assert pick({"profile": "any", "datasets": ["coco", "demo"]}).datasets == ("coco", "demo")
    assert pick({"datasets": ["coco"]}).datasets == ("coco",)  # the default profile allows all
    assert pick({"profile": "cpu"}).datasets == ()
    with pytest.raises(
        ChoiceError, match=r"profile 'gpu-1' may not mount .* 'coco'; it allows: demo"
    ):
        pick({"profile": "gpu-1", "datasets": ["demo", "coco"]})
    with pytest.raises(
        ChoiceError, match=r"profile 'cpu' may not mount .* 'demo'; it allows: none"
    ):
        pick({"profile": "cpu", "datasets": ["demo"]})
    # a GPU count has no profile: any dataset
    assert pick({"gpus": 1, "datasets": ["coco"]}).datasets == ("coco",)


@pytest.mark.parametrize("value", ["demo", [1], {"demo": 1}])
def test_a_profiles_datasets_are_a_list_of_names(value):
    with pytest.raises(ValueError, match=r"'datasets' must be a list of dataset names"):
        parse_profiles([{"display_name": "x", "datasets": value}])


def test_the_hub_refuses_a_profile_naming_an_undefined_dataset_at_start():
    c = Config()
    c.Datasets.definitions = {"demo": {"path": "/srv/demo"}}
    c.GPUDockerSpawner.profile_list = [{"display_name": "GPU", "slug": "gpu", "datasets": ["x"]}]
    with pytest.raises(
        ValueError, match=r"profile 'gpu' names the dataset\(s\) 'x', .* defined: demo"
    ):
        check_config(c)
    c.GPUDockerSpawner.profile_list = [{"display_name": "GPU", "datasets": ["demo"]}]
    check_config(c)


# --- the spawner's use of them (the real class, no Docker) ----------------------------------


def spawner(**config):
    return GPUDockerSpawner(
        user=SimpleNamespace(name="ada", id=1, url="/user/ada/", groups=[]),
        orm_spawner=orm.Spawner(name=""),
        config=Config(config),
    )


def test_a_bad_definition_fails_each_start_with_its_message_without_check_config():
    bad = spawner(Datasets={"definitions": {"demo": {"path": "data"}}})
    with pytest.raises(web.HTTPError) as error:
        bad._datasets()
    assert error.value.status_code == 500
    assert error.value.jupyterhub_message == (
        "c.Datasets.definitions['demo']: 'path' 'data' must be an absolute host folder, "
        "e.g. '/srv/datasets/demo'"
    )


def test_the_spawner_mounts_the_chosen_datasets_under_the_home_and_never_writable():
    ready = spawner(
        Datasets={"definitions": {"demo": {"path": "/srv/demo"}, "coco": {"volume": "coco-v"}}},
        HomeVolumes={"mount_path": "/home/user"},
    )
    assert ready._with_datasets({"Binds": []}) == {"Binds": []}  # none chosen
    ready._chosen_datasets = (ready._datasets()["coco"],)
    host = ready._with_datasets(None)
    assert [mount["Target"] for mount in host["Mounts"]] == ["/home/user/datasets/coco"]
    assert host["Tmpfs"] == {"/home/user/datasets": "mode=0755,size=64k"}
    # a dataset that was not chosen may not be mounted writable through the config either
    request = {"image": "x", "host_config": {"Binds": ["jupyter-gpu-meter-dataset-demo:/d:rw"]}}
    with pytest.raises(ContainerRefused, match=r"jupyter-gpu-meter-dataset-demo at /d writable"):
        ready.docker("create_container", **request)
