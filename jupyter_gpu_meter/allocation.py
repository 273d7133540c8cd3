"""Which free GPUs serve a request. Pure: plain data in, plain data out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

from .gpus import GPU, TOPOLOGY_SYSTEM

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
