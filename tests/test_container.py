"""The create request of every notebook container: GPUs, labels and limits enforced."""

from jupyter_gpu_meter import labels
from jupyter_gpu_meter.container import Hardening, container_labels, enforce_create_kwargs

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
    hardening = Hardening(pids_limit=2048, shm_size_bytes=8 * 1024**3, cap_add=("CHOWN",))
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
