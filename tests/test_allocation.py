"""Which GPUs a request gets, and the allocator that serializes a hub's choices: no Docker,
no NVML."""

import asyncio

import pytest

from jupyter_gpu_meter import GPU, NoFreeGPUs, choose_gpus
from jupyter_gpu_meter.allocation import Allocator, TooManyGPUs, held_by_containers
from jupyter_gpu_meter.container import container_labels
from jupyter_gpu_meter.gpus import Inventory

H100 = "NVIDIA H100 80GB HBM3"
L4 = "NVIDIA L4"


def gpus(*models, unhealthy=()):
    return [GPU(f"GPU-{i}", i, model, healthy=i not in unhealthy) for i, model in enumerate(models)]


def uuids(chosen):
    return [gpu.uuid for gpu in chosen]


def test_takes_the_lowest_free_indices():
    assert uuids(choose_gpus(gpus(H100, H100, H100), {"GPU-0"}, 2)) == ["GPU-1", "GPU-2"]


def test_zero_gpus_is_cpu_only():
    assert choose_gpus(gpus(H100), set(), 0) == ()


def test_never_gives_a_taken_or_unhealthy_gpu():
    inventory = gpus(H100, H100, H100, unhealthy={1})
    assert uuids(choose_gpus(inventory, {"GPU-0"}, 1)) == ["GPU-2"]
    with pytest.raises(NoFreeGPUs) as e:
        choose_gpus(inventory, {"GPU-0", "GPU-2"}, 1, H100)
    assert str(e.value) == f"no free {H100}: 0 of 3 free (1 unhealthy)"


def test_message_says_how_many_exist_and_are_free():
    with pytest.raises(NoFreeGPUs, match=f"^no free {H100}: 0 of 2 free$"):
        choose_gpus(gpus(H100, H100), {"GPU-0", "GPU-1"}, 1, H100)
    with pytest.raises(NoFreeGPUs, match=f"^not enough free {H100}: 2 requested, 1 of 2 free$"):
        choose_gpus(gpus(H100, H100), {"GPU-0"}, 2, H100)


def test_model_is_respected_and_never_mixed():
    inventory = gpus(L4, H100, L4, H100)
    assert uuids(choose_gpus(inventory, set(), 2, H100)) == ["GPU-1", "GPU-3"]
    # any model: the first model with enough free GPUs, never one of each
    assert uuids(choose_gpus(inventory, {"GPU-0"}, 2)) == ["GPU-1", "GPU-3"]
    with pytest.raises(NoFreeGPUs, match="not enough free GPU: 2 requested, 2 of 4 free"):
        choose_gpus(inventory, {"GPU-0", "GPU-1"}, 2)


def test_prefers_gpus_on_the_closest_interconnect():
    inventory = gpus(H100, H100, H100, H100)
    # 0-1 and 2-3 share an NVLink-like switch (level 10); crossing sockets is 50
    topology = {frozenset((f"GPU-{a}", f"GPU-{b}")): 50 for a in range(4) for b in range(a + 1, 4)}
    topology[frozenset(("GPU-0", "GPU-1"))] = 10
    topology[frozenset(("GPU-2", "GPU-3"))] = 10
    assert uuids(choose_gpus(inventory, {"GPU-0"}, 2, topology=topology)) == ["GPU-2", "GPU-3"]


def test_greedy_choice_on_large_machines_stays_close():
    inventory = gpus(*[H100] * 64)
    # eight islands of eight; inside an island level 10, across 40
    topology = {
        frozenset((f"GPU-{a}", f"GPU-{b}")): 10 if a // 8 == b // 8 else 40
        for a in range(64)
        for b in range(a + 1, 64)
    }
    taken = {"GPU-0", "GPU-9"}  # islands 0 and 1 are broken up
    chosen = choose_gpus(inventory, taken, 8, topology=topology)
    assert uuids(chosen) == [f"GPU-{i}" for i in range(16, 24)]


def test_a_lost_gpu_of_unknown_model_does_not_hide_the_model_in_the_message():
    inventory = [GPU("GPU-0", 0, H100), GPU("unknown-index-1", 1, "unknown", healthy=False)]
    with pytest.raises(NoFreeGPUs, match=f"^no free {H100}: 0 of 2 free \\(1 unhealthy\\)$"):
        choose_gpus(inventory, {"GPU-0"}, 1)


# --- the Allocator: one hub process's choices ---------------------------------------


def test_concurrent_allocations_never_share_a_gpu_and_release_frees_them():
    inventory = Inventory(gpus=tuple(gpus(H100, H100, H100)))
    allocator = Allocator()

    async def nothing_in_docker():
        await asyncio.sleep(0)  # a Docker call: other spawns run meanwhile
        return {}

    async def spawn(user):
        return await allocator.allocate(
            nothing_in_docker, inventory, owner=f"{user}/", count=1, model=None, max_per_user=None
        )

    async def crowd():
        return await asyncio.gather(*(spawn(f"u{i}") for i in range(4)), return_exceptions=True)

    results = asyncio.run(crowd())
    chosen = [uuids(r)[0] for r in results if not isinstance(r, Exception)]
    assert sorted(chosen) == ["GPU-0", "GPU-1", "GPU-2"]
    (refused,) = [r for r in results if isinstance(r, Exception)]
    assert isinstance(refused, NoFreeGPUs)
    assert allocator.reserved == {"GPU-0": "u0/", "GPU-1": "u1/", "GPU-2": "u2/"}
    allocator.release(inventory.gpus[:1], "u1/")  # not u1's: kept
    allocator.release(inventory.gpus[:1], "u0/")
    assert set(allocator.reserved) == {"GPU-1", "GPU-2"}


def test_what_docker_says_is_held_counts_and_the_per_user_maximum_too():
    inventory = Inventory(gpus=tuple(gpus(H100, H100, H100)))
    containers = [
        {"State": "running", "Labels": labels_of("ada", "", ["GPU-0"], hub="this")},
        {"State": "exited", "Labels": labels_of("bob", "", ["GPU-1"], hub="this")},
        {"State": "paused", "Labels": labels_of("cyd", "", ["GPU-2"], hub="other")},
    ]
    held = held_by_containers(containers, "this")
    assert held == {"GPU-0": "ada/", "GPU-2": "/hub/other/cyd/"}

    async def allocate(owner, count, max_per_user=None):
        async def in_docker():
            return held

        return await Allocator().allocate(
            in_docker, inventory, owner=owner, count=count, model=H100, max_per_user=max_per_user
        )

    assert uuids(asyncio.run(allocate("bob/", 1))) == ["GPU-1"]
    with pytest.raises(NoFreeGPUs, match=r"1 of 3 free \(1 held by another hub's servers"):
        asyncio.run(allocate("bob/", 2))
    with pytest.raises(TooManyGPUs, match=r"you hold 1 GPU\(s\) in other servers and asked for 1"):
        asyncio.run(allocate("ada/second", 1, max_per_user=1))


def test_one_allocator_per_docker_engine():
    assert Allocator.for_engine("unix://a") is Allocator.for_engine("unix://a")
    assert Allocator.for_engine("unix://a") is not Allocator.for_engine("unix://b")


def labels_of(user, server, uuids_, hub):
    return container_labels(
        user=user, server=server, gpu_uuids=uuids_, gpu_model=H100, profile="", hub_id=hub
    )
