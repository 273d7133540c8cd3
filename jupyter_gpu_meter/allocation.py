"""Which free GPUs serve a request: :func:`choose_gpus`, pure (plain data in, plain
data out), and the :class:`Allocator` that serializes the choices of one hub process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from itertools import combinations
from typing import ClassVar

from . import labels
from .gpus import GPU, TOPOLOGY_SYSTEM, Inventory

# Above this many candidate subsets, choose greedily instead of exhaustively.
_EXHAUSTIVE_LIMIT = 5000


class NoFreeGPUs(Exception):
    """Not enough free healthy GPUs of the requested kind."""

    def __init__(self, *, requested: int, model: str | None, total: int, free: int, unhealthy: int):
        self.requested, self.model = requested, model
        self.total, self.free, self.unhealthy = total, free, unhealthy
        what = model or "GPU"
        if requested == 1 or free == 0:
            message = f"no free {what}: {free} of {total} free"
        else:
            message = f"not enough free {what}: {requested} requested, {free} of {total} free"
        if unhealthy:
            message += f" ({unhealthy} unhealthy)"
        super().__init__(message)


def _spread(group: Sequence[GPU], topology: Mapping[frozenset, int]) -> tuple[int, int]:
    """How far apart a group is: (worst link, sum of links); smaller is closer."""
    levels = [
        topology.get(frozenset((a.uuid, b.uuid)), TOPOLOGY_SYSTEM)
        for a, b in combinations(group, 2)
    ]
    return (max(levels, default=0), sum(levels))


def _closest_group(
    candidates: Sequence[GPU], count: int, topology: Mapping[frozenset, int]
) -> tuple[GPU, ...]:
    """The `count` GPUs with the closest interconnect; ties go to the lowest indices."""

    def rank(group):
        return (_spread(group, topology), [gpu.index for gpu in group])

    if not topology or count == 1:
        return tuple(candidates[:count])
    n_subsets = 1
    for i in range(count):  # n choose count, stopping early once over the limit
        n_subsets = n_subsets * (len(candidates) - i) // (i + 1)
        if n_subsets > _EXHAUSTIVE_LIMIT:
            break
    if n_subsets <= _EXHAUSTIVE_LIMIT:
        return min(combinations(candidates, count), key=rank)
    # Greedy: grow a group from each seed by adding the closest GPU each time.
    groups = []
    for seed in candidates:
        group = [seed]
        rest = [gpu for gpu in candidates if gpu is not seed]
        while len(group) < count:
            best = min(rest, key=lambda gpu: (_spread([*group, gpu], topology), gpu.index))
            group.append(best)
            rest.remove(best)
        groups.append(tuple(sorted(group, key=lambda gpu: gpu.index)))
    return min(groups, key=rank)


def choose_gpus(
    gpus: Iterable[GPU],
    taken: Iterable[str],
    count: int,
    model: str | None = None,
    topology: Mapping[frozenset, int] | None = None,
) -> tuple[GPU, ...]:
    """Pick `count` free, healthy GPUs of `model` (any single model when None).

    A multi-GPU request never mixes models. With a topology (NVML common
    ancestor levels), it prefers GPUs that share the closest interconnect;
    otherwise the lowest indices. Raises :class:`NoFreeGPUs` when the request
    cannot be met now.
    """
    if count <= 0:
        return ()
    taken = set(taken)
    topology = topology or {}
    gpus = sorted(gpus, key=lambda gpu: gpu.index)
    # a lost GPU may not even say its model: only healthy ones name the kinds on offer
    models = [model] if model else list(dict.fromkeys(gpu.model for gpu in gpus if gpu.healthy))
    for candidate_model in models:
        free = [
            gpu
            for gpu in gpus
            if gpu.model == candidate_model and gpu.healthy and gpu.uuid not in taken
        ]
        if len(free) >= count:
            return _closest_group(free, count, topology)
    of_kind = [gpu for gpu in gpus if model is None or gpu.model == model]
    raise NoFreeGPUs(
        requested=count,
        model=model or (models[0] if len(models) == 1 else None),
        total=len(of_kind),
        free=sum(1 for gpu in of_kind if gpu.healthy and gpu.uuid not in taken),
        unhealthy=sum(1 for gpu in of_kind if not gpu.healthy),
    )


# --- who holds what, and the choices of one hub process ------------------------------

#: container states in which a container holds its GPUs
HOLDING_STATES = ("running", "paused", "restarting")
#: how :func:`held_by_containers` names the holder of a GPU that another hub's server
#: holds: "/hub/<id>/<user>/<server>" (a user name never holds "/", so no local owner
#: starts so)
OTHER_HUB = "/hub/"


class TooManyGPUs(Exception):
    """The user would hold more GPUs than the per-user maximum allows."""


def too_many_message(mine: int, count: int, max_per_user: int) -> str:
    """Why a user holding `mine` GPUs elsewhere may not have `count` more."""
    return (
        f"you hold {mine} GPU(s) in other servers and asked for {count}; "
        f"at most {max_per_user} per user"
    )


def held_by_containers(containers: Iterable[Mapping], hub_id: str) -> dict[str, str]:
    """GPU UUID -> "user/server" from Docker's container list (``docker ps`` dicts) of
    our managed containers; "/hub/<id>/user/server" where another hub's server holds it."""
    held = {}
    for container in containers:
        if container.get("State") not in HOLDING_STATES:
            continue
        found = container.get("Labels") or {}
        owner = f"{found.get(labels.USER, '?')}/{found.get(labels.SERVER, '')}"
        if not labels.of_hub(found, hub_id):
            # another hub's server on this engine: its GPUs are taken all the same
            owner = f"{OTHER_HUB}{found.get(labels.HUB)}/{owner}"
        for uuid in labels.gpus_from_labels(found):
            held[uuid] = owner
    return held


def other_hubs_note(error: NoFreeGPUs, inventory: Inventory, held: Mapping[str, str]) -> str:
    """ "(2 held by another hub's servers on this Docker engine)" where that is so."""
    kind = {gpu.uuid for gpu in inventory.gpus if error.model in (None, gpu.model)}
    others = sum(1 for uuid, owner in held.items() if uuid in kind and owner.startswith(OTHER_HUB))
    if not others:
        return ""
    return f" ({others} held by another hub's servers on this Docker engine)"


class Allocator:
    """The GPU choices of one hub process on one Docker engine.

    Running containers' labels say which GPU is taken (so a restarted hub
    reads the allocation back from Docker); between a spawn choosing its GPUs
    and its container existing, the GPUs are reserved here. Choices are made
    one at a time under :attr:`lock`, so concurrent spawns never get the same
    GPU. Owned by the hub's event loop: only its coroutines touch the
    reservations (the hub is one process with one loop).
    """

    _engines: ClassVar[dict[str, Allocator]] = {}

    def __init__(self):
        self.lock = asyncio.Lock()
        #: GPU UUID -> "user/server" of spawns that have chosen GPUs but may have no container yet
        self._reserved: dict[str, str] = {}

    @classmethod
    def for_engine(cls, engine: str) -> Allocator:
        """The one allocator of this process for the Docker engine at `engine` (its URL)."""
        if engine not in cls._engines:
            cls._engines[engine] = cls()
        return cls._engines[engine]

    @property
    def reserved(self) -> dict[str, str]:
        """A copy of the reservations: GPU UUID -> "user/server"."""
        return dict(self._reserved)

    async def allocate(
        self,
        held_now: Callable[[], Awaitable[Mapping[str, str]]],
        inventory: Inventory,
        *,
        owner: str,
        count: int,
        model: str | None,
        max_per_user: int | None,
    ) -> tuple[GPU, ...]:
        """Choose and reserve `count` GPUs for `owner` ("user/server").

        `held_now` reads who holds what from Docker (:func:`held_by_containers`),
        asked under the lock. Raises :class:`TooManyGPUs` beyond `max_per_user`
        (GPUs in the user's other servers count), :class:`NoFreeGPUs` with
        :func:`other_hubs_note` added when too few are free.
        """
        async with self.lock:
            held = {**(await held_now()), **self._reserved}
            user = owner.split("/", 1)[0]
            if max_per_user is not None and count:
                mine = sum(
                    1 for who in held.values() if who.split("/", 1)[0] == user and who != owner
                )
                if mine + count > max_per_user:
                    raise TooManyGPUs(too_many_message(mine, count, max_per_user))
            try:
                gpus = choose_gpus(inventory.gpus, held, count, model, inventory.topology)
            except NoFreeGPUs as e:
                e.args = (str(e) + other_hubs_note(e, inventory, held),)
                raise
            for gpu in gpus:
                self._reserved[gpu.uuid] = owner
        return gpus

    def release(self, gpus: Iterable[GPU], owner: str) -> None:
        """Drop `owner`'s reservations of `gpus`: their container's labels hold them now
        (or the start failed)."""
        for gpu in gpus:
            if self._reserved.get(gpu.uuid) == owner:
                del self._reserved[gpu.uuid]
