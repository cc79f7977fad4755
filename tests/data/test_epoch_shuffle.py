"""The train order depends only on (seed, epoch): a loader rebuilt mid-run (a resume) reproduces later epochs."""
from __future__ import annotations

from qerl.data import Arithmetic
from qerl.data.sampler import EpochShuffle


def epoch_orders(loader, epochs):
    out = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        out.append([prompt for batch in loader for prompt in batch.prompts])
    return out


def test_permutation_is_a_function_of_seed_and_epoch():
    data = list(range(50))
    a, b = EpochShuffle(data, seed=3), EpochShuffle(data, seed=3)
    first = list(a)
    assert sorted(first) == data and first != data
    a.set_epoch(1)
    second = list(a)
    assert sorted(second) == data and second != first
    b.set_epoch(1)  # a fresh sampler jumped straight to epoch 1 (a resumed run)
    assert list(b) == second
    b.set_epoch(0)
    assert list(b) == first
    assert list(EpochShuffle(data, seed=4)) != first


def test_datamodule_train_loader_resumes_later_epochs_in_the_same_order():
    dm = Arithmetic(digits=1, num_train=24, batch_size=4, val_size=0)
    straight = dm.train_dataloader()
    orders = epoch_orders(straight, [0, 1, 2])
    assert len(orders[0]) == 24 and sorted(orders[0]) == sorted(orders[1])
    assert orders[0] != orders[1] != orders[2]
    resumed = dm.train_dataloader()  # what a run resumed in epoch 2 builds
    assert epoch_orders(resumed, [2]) == orders[2:]


def test_ranks_take_interleaved_whole_batches_of_the_one_process_order():
    """Rank r of W draws batches r, W + r, ...: W ranks see what one process draws in W batches; none overlap."""
    from torch.utils.data import DataLoader, DistributedSampler

    data = list(range(23))  # 6 batches of 4 (the last one short)
    one = [b.tolist() for b in DataLoader(data, batch_size=4, sampler=EpochShuffle(data, seed=5, batch_size=4))]
    assert len(one) == 6 and len(one[-1]) == 3
    for world in (2, 3, 4):
        per_rank = [[b.tolist() for b in DataLoader(data, batch_size=4, sampler=EpochShuffle(
            data, seed=5, batch_size=4, num_replicas=world, rank=r))] for r in range(world)]
        steps = 6 // world
        assert all(len(batches) == steps for batches in per_rank)  # every rank steps equally often
        for step in range(steps):
            for r in range(world):
                assert per_rank[r][step] == one[step * world + r]
    sampler = EpochShuffle(data, seed=5, batch_size=4, num_replicas=2, rank=1)
    assert isinstance(sampler, DistributedSampler) and len(sampler) == len(list(sampler)) == 4 + 4 + 3


def test_a_rank_outside_the_world_is_refused():
    import pytest

    with pytest.raises(ValueError, match="rank 2"):
        EpochShuffle(list(range(8)), seed=0, num_replicas=2, rank=2)
