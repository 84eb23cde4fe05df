"""A resumable, rank-aware batch sampler with a fixed global order.

The order of a whole epoch is a permutation drawn from (seed, epoch). Step s of the epoch takes the
global batch perm[s*G:(s+1)*G] (G = world x accumulation x micro-batch) and rank r takes its r-th
contiguous part. Consequences: resuming at (epoch, step) needs no replay of the data, and 2 ranks x
B see exactly the samples 1 rank x 2B would, in the same order.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    def __init__(self, n: int, per_rank_batch: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if n < per_rank_batch * world_size:
            raise ValueError(f"dataset of {n} samples is smaller than one global batch ({per_rank_batch * world_size})")
        self.n, self.b, self.seed, self.rank, self.world, self.shuffle = n, per_rank_batch, seed, rank, world_size, shuffle
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // (self.b * self.world)   # drop the last partial global batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self):
        order = self._order()
        g = self.b * self.world
        for s in range(self.start_step, self.steps_per_epoch):
            start = s * g + self.rank * self.b
            yield order[start:start + self.b].tolist()

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step


class SeededItems(torch.utils.data.Dataset):
    """Per-sample randomness (augmentations, caption choice) drawn from (seed, epoch, index).

    Then an item is the same whichever worker loads it and whether or not the run was resumed,
    which is what makes a resumed run end with the same weights as an uninterrupted one.
    """

    def __init__(self, dataset, seed: int = 0):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(i))
            return self.dataset[i]
