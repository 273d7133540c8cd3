"""``jupyter-gpu-meter node-config``: a Swarm node's engine, runtime and label configuration
from its GPUs."""

from __future__ import annotations

import json
import shlex
import socket

from traitlets import CaselessStrEnum, TraitError, Unicode
from traitlets.config import Application

from ..cluster import COUNT_LABEL, GPU_RESOURCE_KIND, MODEL_LABEL, SWARM_RESOURCE_ENV
from ..gpus import GPUInventory, Inventory

#: the version of the ``--format json`` object; raised only when a key changes meaning or goes
FORMAT_VERSION = 1
DAEMON_JSON = "/etc/docker/daemon.json"
RUNTIME_CONFIG = "/etc/nvidia-container-runtime/config.toml"
RUNTIME_NAME = "nvidia"
RUNTIME_PATH = "nvidia-container-runtime"


class MixedModels(ValueError):
    """A node with GPUs of more than one model: Swarm picks nodes, not GPUs, by model."""


def node_config(inventory: Inventory, node: str) -> dict:
    """The configuration of `node` with the GPUs of `inventory`: the ``--format json`` object.

    Unhealthy GPUs (NVML did not answer for them) are left out and listed under
    ``unhealthy``. Raises :class:`MixedModels` for GPUs of several models.
    """
    healthy = [gpu for gpu in inventory.gpus if gpu.healthy]
    models = list(dict.fromkeys(gpu.model for gpu in healthy))
    if len(models) > 1:
        counts = ", ".join(f"{sum(gpu.model == m for gpu in healthy)} × {m}" for m in models)
        raise MixedModels(
            f"node {node!r} has GPUs of {len(models)} models ({counts}): a Swarm placement "
            f"constraint picks a node by its one {MODEL_LABEL} label, so a node may hold one "
            "GPU model only. Move GPUs so each node has one model, or leave this node out."
        )
    resources = [f"{GPU_RESOURCE_KIND}={gpu.uuid}" for gpu in healthy]
    labels = {COUNT_LABEL: str(len(healthy))}
    if models:
        labels = {MODEL_LABEL: models[0], **labels}
    label_command = ["docker", "node", "update"]
    for key, value in labels.items():
        label_command += ["--label-add", f"{key}={value}"]
    label_command.append(node)
    daemon = {}
    if healthy:
        daemon = {
            "node-generic-resources": resources,
            "default-runtime": RUNTIME_NAME,
            "runtimes": {RUNTIME_NAME: {"path": RUNTIME_PATH, "runtimeArgs": []}},
        }
    return {
        "format_version": FORMAT_VERSION,
        "node": node,
        "source": inventory.source,
        "model": models[0] if models else "",
        "gpus": [
            {
                "uuid": gpu.uuid,
                "index": gpu.index,
                "model": gpu.model,
                "memory_total_bytes": gpu.memory_total_bytes,
            }
            for gpu in healthy
        ],
        "unhealthy": [
            {"index": gpu.index, "uuid": gpu.uuid, "problem": gpu.problem}
            for gpu in inventory.gpus
            if not gpu.healthy
        ],
        "node_generic_resources": resources,
        "dockerd_args": [arg for r in resources for arg in ("--node-generic-resource", r)],
        "daemon_json": daemon,
        "runtime_config_toml": f'swarm-resource = "{SWARM_RESOURCE_ENV}"' if healthy else "",
        "labels": labels,
        "label_command": label_command,
    }


def node_config_text(config: dict) -> str:
    """The configuration as an admin reads it: what goes where, in the order to do it."""
    gpus = config["gpus"]
    node = config["node"]
    what = f"{len(gpus)} × {config['model']}" if gpus else "no GPUs"
    lines = [f"# Node {node}: {what} (from {config['source']})", ""]
    for gpu in config["unhealthy"]:
        lines += [f"# left out: GPU {gpu['index']} ({gpu['uuid']}): {gpu['problem']}", ""]
    if gpus:
        lines += [
            f"# 1. {DAEMON_JSON} on {node} (merge these keys into the file, then restart dockerd):",
            json.dumps(config["daemon_json"], indent=2),
            "",
            f"# 2. {RUNTIME_CONFIG} on {node} (a top-level line; then restart dockerd):",
            config["runtime_config_toml"],
            "",
            "# 3. On a Swarm manager, once the node has joined:",
        ]
    else:
        lines += [
            "# This node needs no GPU resources and no NVIDIA runtime. On a Swarm manager:",
        ]
    lines.append(shlex.join(config["label_command"]))
    return "\n".join(lines) + "\n"


def engine_name() -> str:
    """The local Docker engine's name (its Swarm node hostname), else this host's name."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return client.info()["Name"]
        finally:
            client.close()
    except Exception:  # no engine here (yet): the engine's name defaults to the hostname
        return socket.gethostname()


class NodeConfigCommand(Application):
    """Print a Swarm node's configuration from its GPUs (NVML, or the simulated ones):
    the daemon.json keys (GPUs as generic resources, the NVIDIA runtime), the
    runtime's swarm-resource line and the node-label command for a manager."""

    name = "jupyter-gpu-meter node-config"
    description = __doc__
    classes = [GPUInventory]
    aliases = {
        "config": "NodeConfigCommand.config_file",
        "node": "NodeConfigCommand.node",
        "format": "NodeConfigCommand.format",
    }
    config_file = Unicode("", help="A config file to read, e.g. jupyterhub_config.py.").tag(
        config=True
    )
    node = Unicode(
        "",
        help="""
        The node's name, as Swarm knows it: its Docker engine's name, e.g.
        ``gpu-node-1``. Default: ``GPUInventory.simulated_host`` when set, else
        the local engine's name (``docker info``), else this host's name.
        With simulated GPUs it is also the ``simulated_host`` their UUIDs come from.
        """,
    ).tag(config=True)
    format = CaselessStrEnum(
        ["text", "json"],
        "text",
        help="``text`` for an admin; ``json``: one object for scripts (documented, stable).",
    ).tag(config=True)

    def initialize(self, argv=None):
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
            self.update_config(self.cli_config)

    def start(self):
        inventory_source = GPUInventory(parent=self)
        node = self.node or inventory_source.simulated_host or engine_name()
        try:
            if inventory_source.simulated:
                inventory_source.simulated_host = node
            config = node_config(inventory_source.discover(), node)
        except (ValueError, TraitError) as e:  # MixedModels, a bad node name
            self.log.critical("%s", e)
            self.exit(2)
        if self.format == "json":
            print(json.dumps(config, indent=2))
        else:
            print(node_config_text(config), end="")
