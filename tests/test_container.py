"""The create request of every notebook container: GPUs, labels and limits enforced."""

import pytest

from jupyter_gpu_meter import labels
from jupyter_gpu_meter.container import (
    UNSAFE_SETTINGS,
    ContainerRefused,
    Hardening,
    check_allowed_names,
    check_container_user,
    container_labels,
    enforce_create_kwargs,
    unsafe_settings,
)

UUIDS = ["GPU-aaaa", "GPU-bbbb"]


def enforce(kwargs, gpu_uuids=UUIDS, hardening=None):
    return enforce_create_kwargs(
        kwargs,
        gpu_uuids=gpu_uuids,
        container_labels=container_labels(
            user="ada",
            server="big",
            gpu_uuids=gpu_uuids,
            gpu_model="NVIDIA H100 80GB HBM3",
            profile="h100-2",
            hub_id="prod",
        ),
        hardening=hardening or Hardening(),
    )


def test_gpus_attached_by_device_request_and_labelled():
    out = enforce({"image": "x", "environment": {"JUPYTERHUB_USER": "ada"}})
    assert out["host_config"]["DeviceRequests"] == [
        {
            "Driver": "nvidia",
            "Count": 0,
            "DeviceIDs": UUIDS,
            "Capabilities": [["gpu"]],
            "Options": {},
        }
    ]
    assert out["environment"]["NVIDIA_VISIBLE_DEVICES"] == "GPU-aaaa,GPU-bbbb"
    assert out["environment"]["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa,GPU-bbbb"
    assert out["environment"]["JUPYTERHUB_USER"] == "ada"
    assert out["labels"][labels.GPUS] == "GPU-aaaa,GPU-bbbb"
    assert out["labels"][labels.USER] == "ada"
    assert out["labels"][labels.HUB] == "prod"
    assert labels.gpus_from_labels(out["labels"]) == UUIDS


def test_nothing_upstream_can_widen_the_gpu_set():
    out = enforce(
        {
            "environment": ["NVIDIA_VISIBLE_DEVICES=all", "CUDA_VISIBLE_DEVICES=0,1,2,3", "A=1"],
            "labels": {labels.GPUS: "GPU-all", "team": "ml"},
            "user": "root",
            "host_config": {
                "Privileged": True,
                "DeviceRequests": [{"Driver": "nvidia", "Count": -1}],
                "Devices": [
                    {"PathOnHost": "/dev/nvidia2", "PathInContainer": "/dev/nvidia2"},
                    {"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse"},
                ],
                "CapAdd": ["SYS_ADMIN"],
            },
        },
        gpu_uuids=[],
        hardening=Hardening(allow_unsafe=frozenset({"devices"})),  # /dev/fuse, the admin's choice
    )
    env = out["environment"]
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["A"] == "1"
    assert out["labels"][labels.GPUS] == ""
    assert out["labels"]["team"] == "ml"
    assert out["user"] == "1000:100"
    host = out["host_config"]
    assert "DeviceRequests" not in host
    assert host["Privileged"] is False
    assert host["Devices"] == [{"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse"}]
    assert host["CapAdd"] == [] and host["CapDrop"] == ["ALL"]


def test_hardening_and_multi_gpu_shared_memory():
    hardening = Hardening(
        pids_limit=2048,
        shm_size_bytes=8 * 1024**3,
        cap_add=("CHOWN",),
        ulimits={"memlock": -1, "stack": 67108864},
    )
    host = enforce({"host_config": {"SecurityOpt": ["seccomp=x.json"]}}, hardening=hardening)[
        "host_config"
    ]
    assert host["SecurityOpt"] == ["seccomp=x.json", "no-new-privileges:true"]
    assert host["PidsLimit"] == 2048
    assert host["ShmSize"] == 8 * 1024**3
    assert host["CapAdd"] == ["CHOWN"]
    assert {u["Name"]: (u["Soft"], u["Hard"]) for u in host["Ulimits"]} == {
        "memlock": (-1, -1),
        "stack": (67108864, 67108864),
    }


# --- root users -------------------------------------------------------------

ROOT_USERS = ["", "0", "00", "+0", "-0", "0:0", " 0", "0 ", "0000:100", "root", "root:root", ":100"]


@pytest.mark.parametrize("user", ROOT_USERS)
def test_users_docker_runs_as_root_are_refused(user):
    with pytest.raises(ContainerRefused, match="would run notebooks as root; use .*'1000:100'"):
        check_container_user(user)
    with pytest.raises(ContainerRefused, match="as root"):
        enforce({}, hardening=Hardening(user=user))


@pytest.mark.parametrize("user", ["1000:100", "1000", "1000:0", "jovyan", "jovyan:users", "01000"])
def test_non_root_users_are_kept_as_written(user):
    assert check_container_user(user) == user
    assert enforce({}, hardening=Hardening(user=user))["user"] == user


# --- what needs an admin's opt-in -------------------------------------------

#: (what a create request's host config asks for, the opt-in name it needs)
UNSAFE = [
    ({"PidMode": "host"}, "pid_mode"),
    ({"PidMode": "container:abc"}, "pid_mode"),
    ({"IpcMode": "host"}, "ipc_mode"),
    ({"IpcMode": "container:abc"}, "ipc_mode"),
    ({"UsernsMode": "host"}, "userns_mode"),
    ({"UTSMode": "host"}, "uts_mode"),
    ({"CgroupnsMode": "host"}, "cgroupns_mode"),
    ({"NetworkMode": "container:other-users-notebook"}, "network_mode"),
    ({"SecurityOpt": ["seccomp=unconfined"]}, "security_opt"),
    ({"SecurityOpt": ["seccomp:unconfined"]}, "security_opt"),
    ({"SecurityOpt": ["apparmor=unconfined"]}, "security_opt"),
    ({"SecurityOpt": ["apparmor:unconfined"]}, "security_opt"),
    ({"SecurityOpt": ["label=disable"]}, "security_opt"),
    ({"SecurityOpt": ["label:disable"]}, "security_opt"),
    ({"SecurityOpt": ["label=type:spc_t"]}, "security_opt"),
    ({"SecurityOpt": ["systempaths=unconfined"]}, "security_opt"),
    ({"SecurityOpt": ["writable-cgroups=true"]}, "security_opt"),
    ({"MaskedPaths": []}, "security_opt"),
    ({"ReadonlyPaths": []}, "security_opt"),
    ({"DeviceCgroupRules": ["c 189:* rmw"]}, "device_cgroup_rules"),
    ({"Devices": [{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda"}]}, "devices"),
    ({"Devices": [{"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse"}]}, "devices"),
    ({"VolumesFrom": ["other-users-notebook"]}, "volumes_from"),
    ({"Binds": ["/var/run/docker.sock:/var/run/docker.sock:rw"]}, "docker_engine"),
    ({"Binds": ["/run/docker.sock:/d.sock"]}, "docker_engine"),
    ({"Binds": ["/home/ada/.docker/run/docker.sock:/d.sock:ro"]}, "docker_engine"),
    ({"Binds": ["/run/containerd/containerd.sock:/c.sock"]}, "docker_engine"),
    ({"Binds": ["/var/run:/host-run:ro"]}, "docker_engine"),
    ({"Binds": ["/var/lib/docker/volumes:/v"]}, "docker_engine"),
    ({"Binds": ["//var/run/../run/docker.sock/:/d.sock"]}, "docker_engine"),
    ({"Binds": ["/dev:/dev"]}, "system_paths"),
    ({"Binds": ["/proc:/host-proc:ro"]}, "system_paths"),
    ({"Binds": ["/sys/fs/cgroup:/sys/fs/cgroup:rw"]}, "system_paths"),
    ({"Binds": ["/dev/./sda1:/disk"]}, "system_paths"),
    ({"Binds": ["/:/host:ro"]}, "system_paths"),
    ({"Mounts": [{"Type": "bind", "Source": "/proc", "Target": "/p"}]}, "system_paths"),
    (
        {"Mounts": [{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/s"}]},
        "docker_engine",
    ),
    (
        {
            "Mounts": [
                {
                    "Type": "volume",
                    "Source": "innocent",
                    "Target": "/v",
                    "VolumeOptions": {
                        "DriverConfig": {
                            "Name": "local",
                            "Options": {"type": "none", "o": "bind", "device": "/sys"},
                        }
                    },
                }
            ]
        },
        "system_paths",
    ),
    # Docker reads JSON field names case-insensitively: other spellings count the same
    ({"pidmode": "host"}, "pid_mode"),
    ({"binds": ["/var/run/docker.sock:/s"]}, "docker_engine"),
    ({"mounts": [{"type": "BIND", "source": "/dev", "target": "/d"}]}, "system_paths"),
]


def ids(case):
    return repr(case)[:60]


@pytest.mark.parametrize("host_config, name", UNSAFE, ids=ids)
def test_unsafe_settings_are_refused_with_the_name_that_allows_them(host_config, name):
    assert name in UNSAFE_SETTINGS
    assert set(unsafe_settings(host_config)) == {name} | (
        {"docker_engine"} if host_config == {"Binds": ["/:/host:ro"]} else set()
    )
    with pytest.raises(ContainerRefused) as refused:
        enforce({"host_config": host_config})
    message = str(refused.value)
    assert f"[{name}]" in message
    assert UNSAFE_SETTINGS[name] in message
    assert "c.GPUDockerSpawner.allow_unsafe_settings" in message


@pytest.mark.parametrize("host_config, name", UNSAFE, ids=ids)
def test_each_unsafe_setting_passes_when_allowed_by_its_name(host_config, name):
    allowed = set(unsafe_settings(host_config))
    out = enforce(
        {"host_config": host_config}, hardening=Hardening(allow_unsafe=frozenset(allowed))
    )
    host = out["host_config"]
    for key, value in host_config.items():
        canonical = {k.lower(): k for k in host}[key.lower()]
        if canonical == "SecurityOpt":
            value = [*value, "no-new-privileges:true"]
        assert host[canonical] == value
    assert host["Privileged"] is False and host["CapDrop"] == ["ALL"]
    # another name does not allow it
    others = frozenset(UNSAFE_SETTINGS) - allowed
    with pytest.raises(ContainerRefused):
        enforce({"host_config": host_config}, hardening=Hardening(allow_unsafe=others))


@pytest.mark.parametrize(
    "host_config",
    [
        {"NetworkMode": "host"},  # single-tenant, an admin's explicit choice (network_name)
        {"NetworkMode": "jupyterhub-notebooks"},
        {"NetworkMode": "bridge"},
        {"PidMode": "", "IpcMode": "private", "UTSMode": "", "CgroupnsMode": "private"},
        {"IpcMode": "shareable"},
        {"SecurityOpt": ["seccomp=/etc/docker/seccomp-notebooks.json", "apparmor=docker-default"]},
        {"SecurityOpt": ["label=level:s0:c100,c200", "no-new-privileges:false"]},
        {"Binds": ["jupyterhub-user-ada:/home/jovyan:rw", "/data/shared:/data:ro"]},
        {"Binds": ["/srv/devices:/d", "/home/proc:/p", "/system:/s", "/var/lib/dockerish:/x"]},
        {"Mounts": [{"Type": "volume", "Source": "jupyterhub-user-ada", "Target": "/home"}]},
        {"Mounts": [{"Type": "tmpfs", "Target": "/tmp"}]},
        {"Devices": [{"PathOnHost": "/dev/nvidia0", "PathInContainer": "/dev/nvidia0"}]},
        {"Devices": ["/dev/nvidiactl:/dev/nvidiactl:rwm"]},
    ],
    ids=ids,
)
def test_safe_settings_pass(host_config):
    assert unsafe_settings(host_config) == {}
    host = enforce({"host_config": host_config})["host_config"]
    assert host["Devices"] == []  # GPU nodes are dropped, the device request attaches GPUs
    assert host["SecurityOpt"][-1] == "no-new-privileges:true"


def test_forced_settings_hold_in_any_spelling():
    host = enforce({"host_config": {"privileged": True, "capadd": ["SYS_ADMIN"], "PIDSLIMIT": -1}})[
        "host_config"
    ]
    assert host["Privileged"] is False
    assert host["CapAdd"] == []
    assert host["PidsLimit"] == 4096
    assert not {"privileged", "capadd", "PIDSLIMIT"} & set(host)
    with pytest.raises(ContainerRefused, match="sets Privileged twice"):
        enforce({"host_config": {"Privileged": False, "privileged": True}})


def test_every_problem_is_named_in_one_message():
    with pytest.raises(ContainerRefused) as refused:
        enforce(
            {
                "host_config": {
                    "PidMode": "host",
                    "Binds": ["/var/run/docker.sock:/var/run/docker.sock", "/proc:/p"],
                }
            },
            hardening=Hardening(allow_unsafe=frozenset({"system_paths"})),
        )
    message = str(refused.value)
    assert "(PidMode=host) [pid_mode]" in message
    assert "(/var/run/docker.sock) [docker_engine]" in message
    assert "system_paths" not in message  # allowed


def test_opt_in_names_are_checked():
    assert check_allowed_names({"pid_mode", "devices"}) == {"pid_mode", "devices"}
    with pytest.raises(ValueError, match=r"unknown name\(s\) 'pid'; known: cgroupns_mode, "):
        check_allowed_names({"pid", "devices"})
