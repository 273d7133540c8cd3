"""Data-parallel training of a small model, one process per GPU.

Run it with torchrun (the notebook does this for you):

    torchrun --nnodes=1 --master-addr=127.0.0.1 --master-port=29500 --nproc_per_node=N train_ddp.py

torchrun starts N copies of this script and gives each its RANK, LOCAL_RANK and
WORLD_SIZE. With GPUs each process drives one GPU and the processes talk over
NCCL; without a GPU they run on the CPU and talk over gloo. The data here is
synthetic (a noisy linear function) so that nothing has to be downloaded:
replace `make_dataset` with your own `torch.utils.data.Dataset`.
"""

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def make_dataset(samples: int, features: int, seed: int = 0) -> TensorDataset:
    """y = x @ w + noise, the same on every rank (same seed)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=generator)
    w = torch.randn(features, 1, generator=generator)
    y = x @ w + 0.01 * torch.randn(samples, 1, generator=generator)
    return TensorDataset(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=50, help="optimizer steps (epochs run until then)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--features", type=int, default=32)
    args = parser.parse_args()

    use_cuda = torch.cuda.is_available()
    # NCCL between GPUs; gloo when there is no GPU (CPU processes)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        torch.set_num_threads(1)  # N processes share the CPU cores
        device = torch.device("cpu")

    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = nn.Sequential(nn.Linear(args.features, 64), nn.ReLU(), nn.Linear(64, 1)).to(device)
    model = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    dataset = make_dataset(args.samples, args.features)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)

    started, step, epoch = time.perf_counter(), 0, 0
    while step < args.steps:
        sampler.set_epoch(epoch)  # a different shuffle each epoch, the same on all ranks
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()  # DDP averages the gradients over all ranks here
            optimizer.step()
            step += 1
            if rank == 0 and (step % 10 == 0 or step == 1):
                print(f"step {step:4d}  loss {loss.item():.4f}", flush=True)
            if step >= args.steps:
                break
        epoch += 1

    # every rank must hold the same weights: compare a checksum across ranks
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    checksums = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(checksums, checksum)
    agree = all(torch.allclose(c, checksums[0]) for c in checksums)
    if rank == 0:
        seconds = time.perf_counter() - started
        print(
            f"{world} process(es) on {'GPU' if use_cuda else 'CPU'} ({dist.get_backend()}), "
            f"{step} steps in {seconds:.1f} s, final loss {loss.item():.4f}"
        )
        print("ranks agree on the weights" if agree else "RANKS DISAGREE", flush=True)
        if use_cuda:
            print(f"peak GPU memory on rank 0: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    dist.destroy_process_group()
    if not agree:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
