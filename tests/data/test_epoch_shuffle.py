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
