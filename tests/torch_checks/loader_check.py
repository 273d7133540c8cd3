"""DataLoader workers hand their batches over through /dev/shm: all of them held at once.

8 blocks of 48 MiB (384 MiB) built in 2 worker processes: Docker's default
64 MiB /dev/shm fails this with "insufficient shared memory (shm)"; the
spawner's per-server size must not. Prints one JSON object.
"""

import json
import os

import torch
from torch.utils.data import DataLoader, Dataset

MIB = 2**20
BLOCKS, BLOCK_MIB, WORKERS = 8, 48, 2


class Blocks(Dataset):
    def __len__(self):
        return BLOCKS

    def __getitem__(self, index):
        return torch.full((BLOCK_MIB * MIB // 4,), float(index)), os.getpid()


if __name__ == "__main__":
    loader = DataLoader(Blocks(), batch_size=1, num_workers=WORKERS, prefetch_factor=2)
    batches = list(loader)  # every block stays in shared memory while it is held here
    print(
        json.dumps(
            {
                "values": [block[0, -1].item() for block, _ in batches],
                "workers": sorted({int(pid) for _, pid in batches}),
                "main": os.getpid(),
                "held_mib": sum(b.numel() * b.element_size() for b, _ in batches) // MIB,
            }
        )
    )
