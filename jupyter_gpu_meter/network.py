"""The notebooks' own Docker network: one bridge, no traffic between notebooks.

Notebooks are put on a user-defined bridge network created with
inter-container communication off (``com.docker.network.bridge.enable_icc``
``false``). Each notebook then reaches:

- the host only at the network's gateway address, where the hub listens
  (``c.JupyterHub.hub_ip``); services bound to the host's loopback (the
  meter, the proxy's API, a PostgreSQL ledger) are not on that address;
- no other notebook: the engine drops bridge-to-bridge forwarding for the
  network (an iptables rule; the engine must run with ``--iptables=true``,
  its default);
- with ``internal`` networks, nothing beyond the bridge at all.

The hub reaches each notebook at its address on the network. Blocking
Docker calls only (docker-py's low-level ``APIClient``): the spawner runs
them off the event loop, the hub config at load time.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the network the spawner and the shipped config use unless told otherwise
DEFAULT_NETWORK = "jupyter-gpu-meter"
#: Docker's option that turns traffic between containers of a bridge network on or off
ICC_OPTION = "com.docker.network.bridge.enable_icc"
#: Docker's own networks, which the spawner never creates or changes
BUILTIN = ("host", "bridge", "none")


class NetworkError(Exception):
    """A network the spawner cannot put notebooks on, with what to do about it."""


@dataclass(frozen=True)
class NotebookNetwork:
    """What the hub needs to know about the notebooks' network."""

    name: str
    #: the host's address on the network: where notebooks reach the hub
    gateway: str
    subnet: str
    #: False when Docker drops traffic between the network's containers
    icc: bool
    internal: bool

    @classmethod
    def from_inspect(cls, attrs: dict) -> NotebookNetwork:
        name = attrs.get("Name", "")
        if attrs.get("Driver") != "bridge":
            raise NetworkError(
                f"Docker network {name!r} uses the {attrs.get('Driver')!r} driver; notebooks "
                "need a bridge network (docker network create --driver bridge ...)"
            )
        configs = [c for c in (attrs.get("IPAM") or {}).get("Config") or [] if c.get("Gateway")]
        ipv4 = [c for c in configs if ":" not in c["Gateway"]]
        if not ipv4:
            raise NetworkError(
                f"Docker network {name!r} has no IPv4 gateway: the hub could not listen "
                "where notebooks reach it; recreate it with an IPv4 subnet"
            )
        options = attrs.get("Options") or {}
        return cls(
            name=name,
            gateway=ipv4[0]["Gateway"].split("/")[0],
            subnet=ipv4[0].get("Subnet", ""),
            icc=str(options.get(ICC_OPTION, "true")).lower() != "false",
            internal=bool(attrs.get("Internal")),
        )


def creation_options(*, internal: bool) -> dict:
    """docker-py ``create_network`` kwargs of a new notebooks' network."""
    return {
        "driver": "bridge",
        "options": {ICC_OPTION: "false"},
        "internal": internal,
        "labels": {"jupyter-gpu-meter.network": "notebooks"},
        "check_duplicate": True,
    }


def ensure_network(api, name: str, *, internal: bool = False) -> NotebookNetwork:
    """The network `name`, created (ICC off) if missing. Blocking.

    `api` is a docker-py ``APIClient``. A network that exists is used as it
    is; a concurrent creation by another process is not an error.
    """
    from docker.errors import APIError, NotFound

    if name in BUILTIN:
        raise NetworkError(
            f"{name!r} is Docker's own network; notebooks get a network of their own "
            f"(e.g. {DEFAULT_NETWORK!r})"
        )
    try:
        return NotebookNetwork.from_inspect(api.inspect_network(name))
    except NotFound:
        pass
    try:
        api.create_network(name, **creation_options(internal=internal))
    except APIError as e:
        if e.status_code != 409:  # 409: created meanwhile by someone else
            raise NetworkError(f"cannot create the Docker network {name!r}: {e.explanation}") from e
    return NotebookNetwork.from_inspect(api.inspect_network(name))
