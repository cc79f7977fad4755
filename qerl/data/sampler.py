"""A train shuffle that depends only on (seed, epoch), so a resumed run sees the same order; split by batch over ranks."""
from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler, RandomSampler

from qerl.parallel import world


class EpochShuffle(RandomSampler, DistributedSampler):
    """`RandomSampler` whose permutation for epoch e is drawn from a generator seeded with (seed, e).

    A DataLoader built with one seeded generator gives epoch 1 the generator's *second* permutation; a resumed
    run builds a fresh loader and would give epoch 1 the first one. Here Lightning's `set_epoch` (called on the
    loader's sampler at the start of every epoch) picks the permutation, so the order never depends on how many
    epochs this process has iterated.

    Under data parallelism (`num_replicas` ranks; by default the size of the initialised process group) the
    permutation is cut into batches of `batch_size` and rank r takes batches r, r + W, r + 2W, ...: W ranks
    drawing one batch each see exactly the prompts one process draws in W batches, so a W-rank run is the
    one-process run with W times the prompts per step. Every rank gets the same number of batches (the last
    `len(batches) % W` of an epoch are left out). Being a `DistributedSampler`, Lightning keeps it as it is
    instead of putting its own in.
    """

    def __init__(self, data_source, seed: int, batch_size: int = 1, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        RandomSampler.__init__(self, data_source)
        size, own = world()
        self.num_replicas = int(num_replicas if num_replicas is not None else size)
        self.rank = int(rank if rank is not None else own)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"EpochShuffle: rank {self.rank} is not in [0, {self.num_replicas}).")
        self.dataset = data_source
        self.seed = int(seed)
        self.batch_size = max(1, int(batch_size))
        self.shuffle, self.drop_last = True, True
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _own_batches(self) -> list[tuple[int, int]]:
        size, world = len(self.data_source), self.num_replicas
        batches = [(start, min(size, start + self.batch_size)) for start in range(0, size, self.batch_size)]
        if world == 1:
            return batches
        usable = len(batches) - len(batches) % world
        return batches[self.rank:usable:world]

    def __len__(self) -> int:
        return sum(end - start for start, end in self._own_batches())

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.data_source), generator=generator).tolist()
        for start, end in self._own_batches():
            yield from order[start:end]
