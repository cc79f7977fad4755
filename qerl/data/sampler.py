"""A train shuffle that depends only on (seed, epoch), so a run resumed in a later epoch sees the same order."""
from __future__ import annotations

import torch
from torch.utils.data import RandomSampler


class EpochShuffle(RandomSampler):
    """`RandomSampler` whose permutation for epoch e is drawn from a generator seeded with (seed, e).

    A DataLoader built with one seeded generator gives epoch 1 the generator's *second* permutation; a resumed
    run builds a fresh loader and would give epoch 1 the first one. Here Lightning's `set_epoch` (called on the
    loader's sampler at the start of every epoch) picks the permutation, so the order never depends on how many
    epochs this process has iterated. Under a distributed strategy Lightning swaps a `RandomSampler` for its
    own epoch-seeded `DistributedSampler`.
    """

    def __init__(self, data_source, seed: int) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()
