"""What a start is checked against, before anything is allocated or created.

:class:`StartChecks` is mixed into :class:`~jupyter_gpu_meter.GPUDockerSpawner`:
the container hardening settings (enforced by
:func:`jupyter_gpu_meter.container.enforce_create_kwargs`), the ulimits the
Docker engine can grant (:mod:`~jupyter_gpu_meter.ulimits`, read once per
engine), names the ledger can record, the image's CUDA against the host's
driver, and the notebooks' network. :func:`spawn_error` is how every refusal
reaches the user.
"""

from __future__ import annotations

import asyncio
import ipaddress
from urllib.parse import urlparse

from jupyterhub.traitlets import ByteSpecification
from jupyterhub.utils import random_port
from tornado import web
from traitlets import Bool, Dict, HasTraits, Int, List, Set, Unicode, validate

from . import labels, ulimits
from .container import UNSAFE_SETTINGS, check_allowed_names, check_container_user
from .gpus import Inventory, cuda_driver_problem
from .ledger.models import NAME_RULE, name_problem
from .network import NetworkError, NotebookNetwork, ensure_network


def spawn_error(status: int, message: str) -> web.HTTPError:
    """An HTTPError whose message the hub shows as it is, on the spawn page and in the API."""
    error = web.HTTPError(status, "%s", message)
    error.jupyterhub_message = message
    return error


class StartChecks(HasTraits):
    """The settings and checks of a start, for a DockerSpawner (``self.docker``,
    ``self.client``, ``self.executor``, ``self.user``, ``self.hub``)."""

    shm_size = ByteSpecification(
        "1G",
        help="""
        Size of ``/dev/shm`` per server, e.g. ``"1G"`` or ``"16G"``.

        NCCL (multi-GPU) and PyTorch DataLoader workers exchange tensors through
        shared memory; Docker's default of 64 MiB makes them fail. A per-server
        size is used rather than ``ipc=host``, which would share the host's IPC
        namespace between users.
        """,
    ).tag(config=True)

    pids_limit = Int(
        4096,
        min=64,
        help="Most processes and threads per server (Docker's pids limit), e.g. 4096.",
    ).tag(config=True)

    ulimits = Dict(
        {"stack": 67108864},
        help="""
        Resource limits per server, name to value (soft = hard), as
        ``docker run --ulimit``, e.g. ``{"memlock": -1, "stack": 67108864}``.
        The defaults follow NCCL's and NVIDIA's advice for multi-GPU
        training: a 64 MiB stack and, when ``memlock`` is left out (the
        default), the most locked memory the Docker engine grants: unlimited
        (-1) where it can, else its own hard limit in bytes, read once per
        engine from a tiny container of ``image`` and logged. A ``memlock``
        or ``stack`` set here is kept as it is, and refused with a message
        when it is more than the engine grants (the start would fail anyway).
        """,
    ).tag(config=True)

    container_user = Unicode(
        "1000:100",
        help="""
        ``uid:gid`` (or user name) the notebook runs as, e.g. ``"1000:100"``;
        never root. Refused: an empty user (the image's own, often root),
        ``root``, and any number equal to 0 (``"0"``, ``"00"``, ``"+0"``,
        ``"0:0"``). Prefer a numeric uid: a name that the image maps to uid 0
        cannot be checked. The default matches the shipped image's ``jovyan``.
        """,
    ).tag(config=True)

    @validate("container_user")
    def _check_user(self, proposal):
        return check_container_user(proposal.value)

    cap_add = List(
        Unicode(),
        help="""
        Linux capabilities given back to notebook containers by name, e.g.
        ``["CHOWN"]``; all others are dropped, and ``ALL`` is refused. Empty by
        default: a notebook started as a non-root user needs none. Each name
        here is the admin's opt-in for that capability.
        """,
    ).tag(config=True)

    @validate("cap_add")
    def _check_cap_add(self, proposal):
        if any(cap.strip().upper() in ("ALL", "CAP_ALL") for cap in proposal.value):
            raise ValueError("cap_add: 'ALL' is refused; name each capability, e.g. ['CHOWN']")
        return proposal.value

    allow_unsafe_settings = Set(
        Unicode(),
        help=f"""
        Container settings refused by default, allowed by name, e.g.
        ``{{"devices"}}`` to let ``extra_host_config`` add a host device.
        Each lets a notebook reach the host or other users' containers: use
        them on single-tenant hosts only. A start whose container asks for one
        that is not allowed fails with a message naming it. The names:
        {", ".join(f"``{name}``" for name in sorted(UNSAFE_SETTINGS))}.
        """,
    ).tag(config=True)

    @validate("allow_unsafe_settings")
    def _check_allow_unsafe(self, proposal):
        return set(check_allowed_names(proposal.value))

    check_cuda_driver = Bool(
        True,
        help="""
        Before starting a GPU server, compare the image's CUDA version (its
        ``jupyter-gpu-meter.cuda-version`` label) with the host's NVIDIA driver
        and refuse the start with a clear message when they cannot work together.
        """,
    ).tag(config=True)

    network_internal = Bool(
        False,
        help="""
        Create the notebooks' network (``network_name``, when it does not
        exist yet) as an internal one: notebooks reach the hub and nothing
        beyond the host, e.g. no package index. False (the default):
        notebooks reach the internet through the host, still not each other
        nor the host's loopback services. An existing network is used as it is.
        """,
    ).tag(config=True)

    async def _ulimits_for_engine(self) -> dict:
        """``ulimits`` with ``memlock`` at the most the engine grants unless set
        (:func:`~jupyter_gpu_meter.ulimits.engine_ulimits`); a 500 for a value it cannot
        grant. Without the engine's limits (the probe failed) ``ulimits`` as they are."""
        engine = await self._engine_limits()
        if engine is None:
            return dict(self.ulimits)
        try:
            return ulimits.engine_ulimits(self.ulimits, engine)
        except ValueError as e:
            raise spawn_error(500, str(e)) from None

    async def _engine_limits(self) -> dict | None:
        """The engine's hard limits (name -> bytes or count, -1 unlimited), probed once per
        engine and hub process; None (logged, tried again at the next start) if it fails."""
        engine = str(self.client.base_url)
        if engine not in _engine_limits:
            try:
                text = await asyncio.wrap_future(
                    self.executor.submit(probe_limits, self.client, self.image, self.container_user)
                )
                _engine_limits[engine] = ulimits.parse_proc_limits(text)
            except Exception as e:
                self.log.warning(
                    "Could not read the Docker engine's ulimits with a container of %s (%s): "
                    "starting with ulimits %s, memlock as the engine sets it",
                    self.image,
                    e,
                    dict(self.ulimits),
                )
                return None
            memlock = _engine_limits[engine]["memlock"]
            configured = self.ulimits.get("memlock")
            self.log.info(
                "Docker engine %s grants locked memory up to %s: notebooks get memlock %s",
                engine,
                ulimits.describe(memlock),
                ulimits.describe(memlock)
                if configured is None
                else f"{ulimits.describe(configured)} (c.GPUDockerSpawner.ulimits)",
            )
        return _engine_limits[engine]

    def check_names(self):
        """Refuse (400) a user or server name the meter's ledger could not record.

        Checked before anything is allocated or created: a server the ledger
        cannot record would run unbilled.
        """
        for what, name in (("user name", self.user.name), ("server name", self.name)):
            problem = name_problem(name)
            if problem:
                shown = repr(name[:40]) + ("…" if len(name) > 40 else "")
                fix = "ask an admin to rename the user" if what == "user name" else "rename it"
                raise spawn_error(
                    400,
                    f"the {what} {shown} cannot be metered: {problem}; allowed: {NAME_RULE}; {fix}",
                )

    async def _check_driver(self, inventory: Inventory):
        if not (self.check_cuda_driver and inventory.driver_version):
            return
        await self.pull_image(self.image)  # DockerSpawner's, by its pull_policy: then inspect it
        image = await self.docker("inspect_image", self.image)
        cuda = ((image.get("Config") or {}).get("Labels") or {}).get(labels.CUDA_VERSION, "")
        problem = cuda_driver_problem(cuda, inventory.driver_version)
        if problem:
            raise spawn_error(500, f"image {self.image}: {problem}")

    async def _prepare_network(self) -> None:
        """Host networking: a free port on the host (and a warning, once per hub);
        otherwise the notebooks' network (:meth:`_ensure_network`)."""
        if self.network_name == "host":
            _warn_host_network(self.log)
            self.port = random_port()
        else:
            await self._ensure_network()

    async def _ensure_network(self) -> NotebookNetwork | None:
        """The notebooks' network, created if missing; refuse a start notebooks cannot finish.

        DockerSpawner's own ``bridge`` network is used as it is (ports published
        on the host). Any other is created with traffic between containers off.
        """
        if self.network_name in ("bridge", "none"):
            return None
        try:
            network = await asyncio.wrap_future(
                self.executor.submit(
                    ensure_network, self.client, self.network_name, internal=self.network_internal
                )
            )
        except NetworkError as e:
            raise spawn_error(500, str(e)) from None
        if network.icc and not getattr(self, "_warned_icc", False):
            self._warned_icc = True
            self.log.warning(
                "Docker network %s lets containers reach each other (created without %s=false): "
                "one user's notebook can reach another's",
                network.name,
                "com.docker.network.bridge.enable_icc",
            )
        api_url = self.hub_connect_url or self.hub.api_url
        if _is_loopback(urlparse(api_url).hostname or ""):
            raise spawn_error(
                500,
                f"the hub's API is at {api_url}, which notebooks on the Docker network "
                f"{network.name} cannot reach: let the hub listen on the network's gateway, "
                f"c.JupyterHub.hub_ip = {network.gateway!r} "
                "(jupyter_gpu_meter.hubconfig.setup_network(c) does)",
            )
        return network


#: Docker engine (base URL) -> its hard limits; written on the event loop only
_engine_limits: dict[str, dict[str, int]] = {}


def probe_limits(client, image: str, user: str) -> str:
    """``/proc/self/limits`` of a container of `image` that sets no ulimit: the engine's
    own hard limits (blocking; docker-py's low-level client). Removed after."""
    container = client.create_container(
        image,
        entrypoint=["cat"],
        command=["/proc/self/limits"],
        user=user,
        network_disabled=True,
        labels={labels.PREFIX + "probe": "ulimits"},
        host_config=client.create_host_config(
            network_mode="none", cap_drop=["ALL"], security_opt=["no-new-privileges:true"]
        ),
    )
    try:
        client.start(container)
        status = client.wait(container, timeout=60)
        output = client.logs(container, stdout=True, stderr=True).decode(errors="replace")
        if status.get("StatusCode") != 0:
            raise RuntimeError(f"exited with {status.get('StatusCode')}: {output[-300:]}")
        return output
    finally:
        client.remove_container(container, force=True)


_host_network_warned = False


def _warn_host_network(log) -> None:
    """Once per hub: host networking is for one tenant only."""
    global _host_network_warned
    if not _host_network_warned:
        _host_network_warned = True
        log.warning(
            "GPUDockerSpawner.network_name = 'host': every notebook shares the host's network, "
            "reaches whatever listens on its loopback (the meter, the proxy's API, databases) "
            "and other users' notebooks. Use it only where all users are trusted alike."
        )


def _is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is the loopback interface of whoever connects."""
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
