"""JupyterHub on one GPU server: each user gets a PyTorch-CUDA notebook with whole GPUs.

Start it with ``jupyterhub -f jupyterhub_config.py`` (or ``scripts/demo``).
Without an NVIDIA driver, GPUs are simulated. The login accepts anyone: it is
for trying things out, NOT for production (see docs: "Give users GPUs").
"""

import os

c = get_config()  # noqa: F821

# --- who may log in: anyone, for trying it out. Replace for production. ---
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"admin"}

c.JupyterHub.bind_url = os.environ.get("JUPYTERHUB_BIND_URL", "http://127.0.0.1:8000")
c.JupyterHub.allow_named_servers = True
# Notebook servers outlive a hub restart (upgrades, config changes); the spawner
# reads their GPUs back from Docker and the meter goes on metering them.
c.JupyterHub.cleanup_servers = False

# --- GPUs ---
c.JupyterHub.spawner_class = "gpu-docker"
if not os.path.exists("/proc/driver/nvidia/version") and not os.environ.get(
    "JUPYTER_GPU_METER_SIMULATED_GPUS"
):
    # No NVIDIA driver here: simulate two GPUs (the env variable chooses others).
    c.GPUInventory.simulated = "2xNVIDIA H100 80GB HBM3"

c.GPUDockerSpawner.image = os.environ.get(
    "JUPYTER_GPU_METER_IMAGE", "jupyter-gpu-meter/notebook:latest"
)
c.GPUDockerSpawner.pull_policy = "never"  # built locally from docker/
c.GPUDockerSpawner.profile_list = [
    {"display_name": "CPU only", "slug": "cpu", "gpus": 0, "cpu_limit": 2, "mem_limit": "4G"},
    {
        "display_name": "1 GPU",
        "slug": "gpu-1",
        "gpus": 1,
        "default": True,
        "cpu_limit": 8,
        "mem_limit": "64G",
        "description": "One whole GPU for interactive work and single-GPU training.",
    },
    {
        "display_name": "2 GPUs",
        "slug": "gpu-2",
        "gpus": 2,
        "cpu_limit": 16,
        "mem_limit": "128G",
        "description": "Two GPUs on the closest interconnect, for DDP/NCCL training.",
    },
]
c.GPUDockerSpawner.max_gpus_per_user = 2
c.GPUDockerSpawner.shm_size = "8G"  # NCCL and DataLoader workers

# Notebooks get a Docker network of their own (created if missing): a bridge on
# which they reach the hub's API at the network's gateway, where the hub listens,
# but not each other, nor what listens on the host's loopback (the meter, the
# proxy's API, a local database). Docs: "Security model".
network = os.environ.get("JUPYTER_GPU_METER_DOCKER_NETWORK", "jupyter-gpu-meter")
if network == "host":
    # single-tenant only: every notebook shares the host's network and loopback
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.GPUDockerSpawner.network_name = "host"
else:
    from jupyter_gpu_meter.hubconfig import setup_network

    setup_network(c, network)

c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120

# --- metering: the gpu-meter service records every session in the ledger ---
# It reads this same file, so GPUs and prices are set once. Its ledger is
# jupyter_gpu_meter.sqlite next to jupyterhub.sqlite unless
# JUPYTER_GPU_METER_DB_URL (or c.MeterService.db_url) says otherwise.
# setup_meter also gives the service its role (least scopes: see docs, "Meter
# service"), lets every user see their own usage at /services/gpu-meter/ and
# adds "GPU usage" to the hub's navigation bar. Hub admins see everyone's; to
# let others see everyone's too, pass read_all_users=[...] or read_all_groups=[...].
from jupyter_gpu_meter.hubconfig import setup_meter  # noqa: E402

setup_meter(c, __file__)
c.Pricing.currency = "USD"
c.Pricing.prices = {"NVIDIA H100 80GB HBM3": "2.49"}  # per GPU-hour
c.Pricing.default_price = "1.00"  # per GPU-hour, other models
c.Pricing.cpu_price = "0"  # per hour, CPU-only servers
c.Pricing.billing_increment = 1  # seconds
c.Pricing.storage_price = "0.10"  # per GB-month (10**9 bytes, 730 hours): homes and snapshots

# --- homes: each user's /home/jovyan is a Docker volume of their own, kept across
# stops, culls and restarts (docs: "Keep users' work"). On by default; e.g.:
# c.HomeVolumes.size_warning = "50G"  # flag bigger homes on the usage pages
# c.HomeVolumes.name_template = "{hub_id}-home-{username}"  # two hubs on one engine

# --- datasets: read-only data users tick on the spawn page (docs: "Give users datasets") ---
# c.Datasets.definitions = {
#     "demo": {"path": "/srv/datasets/demo", "description": "A folder on this host"},
#     "imagenet": {"driver": "local", "driver_opts": {
#         "type": "nfs", "o": "addr=10.0.0.5,ro,nfsvers=4.1", "device": ":/export/imagenet"}},
# }

# Last: settings read only when a server starts are checked now, so a mistake
# stops the hub here with a message that says what is allowed.
from jupyter_gpu_meter.hubconfig import check_config  # noqa: E402

check_config(c)
