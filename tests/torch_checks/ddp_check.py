"""A few DDP steps on CPU (gloo), run by torchrun; each rank writes ddp-<rank>.json.

The ranks start from different weights and train on different data: only DDP's
broadcast and gradient averaging make them end equal. Each rank also replays
the same steps in one process on every rank's data, which is what DDP must
have computed.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

STEPS, BATCH, FEATURES = 5, 16, 8


def batch(rank, step):
    """Each rank's own data: only DDP's averaging of the gradients keeps the ranks equal."""
    generator = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(BATCH, FEATURES, generator=generator)
    return x, x.sum(dim=1, keepdim=True)


def train(model, batches):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def flat(model):
    return [value for p in model.parameters() for value in p.detach().flatten().tolist()]


if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)  # different weights on each rank: DDP starts all from rank 0's
    local = nn.Linear(FEATURES, 1)
    model = DistributedDataParallel(local)
    start = {name: value.clone() for name, value in local.state_dict().items()}
    train(model, (batch(rank, step) for step in range(STEPS)))
    # The same steps in one process on all ranks' data at once: with equal batches the
    # mean loss has the mean of the ranks' gradients, which is what DDP applies.
    reference = nn.Linear(FEATURES, 1)
    reference.load_state_dict(start)
    batches = ([batch(r, step) for r in range(world)] for step in range(STEPS))
    train(
        reference, ((torch.cat([x for x, _ in b]), torch.cat([y for _, y in b])) for b in batches)
    )
    with open(f"ddp-{rank}.json", "w") as file:
        json.dump(
            {
                "rank": rank,
                "world": world,
                "backend": dist.get_backend(),
                "python": sys.executable,
                "start": [v for t in start.values() for v in t.flatten().tolist()],
                "params": flat(local),
                "reference": flat(reference),
            },
            file,
        )
    dist.destroy_process_group()
