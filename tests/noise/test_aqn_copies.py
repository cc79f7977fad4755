"""AQN's own work in a step is a fixed number of copies and host syncs, whatever the number of norms (issue #33).

On an H100 a SmolLM2 AQN step (60 targeted norms) dispatched ~570 more `aten::copy_` than a float32-norms step:
one clone, one add and one restore copy per norm, and three casts per norm in each of two measurements (the HF
backend measured the fast engine's scales, which are the policy's own weights, a second time). Now the clean
copies are one `cat`, the add and the restore one `_foreach_*` each, a measurement casts once per kind of tensor,
and the fast engine's measurement is the policy's. Counted at the dispatcher (each operator once, at the top:
what a GPU launches), so the counts are exact and do not depend on timing.
"""
from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from qerl.models.byte_tokenizer import byte_tokenizer
from qerl.noise.inject import noisy_norms
from qerl.noise.precision import keep_norms_float32
from qerl.rollout import HF

pytestmark = pytest.mark.usefixtures("one_thread")

COPIES = ("copy_", "_to_copy", "clone", "cat", "stack", "_foreach_copy_", "_foreach_add_")


class Ops(TorchDispatchMode):
    """Counts the aten operators dispatched inside the block (the top-level ones), by name."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def copies(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.calls.items()) if k in COPIES}


@pytest.fixture
def policy(tiny_llama):
    def build(layers: int):
        tok = byte_tokenizer()
        model = tiny_llama(seed=3, vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                           num_hidden_layers=layers).to(torch.bfloat16)
        keep_norms_float32(model)
        return model, tok
    return build


def host_copies(monkeypatch) -> list[int]:
    """Counts `Tensor.cpu()` calls (a device-to-host copy and sync on a GPU)."""
    calls = [0]
    cpu = torch.Tensor.cpu

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return cpu(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counted)
    return calls


def block_ops(run) -> tuple[dict[str, int], dict[str, int]]:
    """(ops dispatched entering the block, ops dispatched leaving it) of `run()`, a context manager."""
    enter, leave = Ops(), Ops()
    block = run()
    with enter:
        block.__enter__()
    with leave:
        block.__exit__(None, None, None)
    return enter.copies(), leave.copies()


@pytest.mark.parametrize("relative", [False, True])
def test_noisy_norms_copies_do_not_grow_with_the_norms(policy, monkeypatch, relative):
    counts = {}
    for layers in (2, 6):  # 4 and 12 targeted norms
        model, _ = policy(layers)
        syncs = host_copies(monkeypatch)
        enter, leave = block_ops(lambda m=model: noisy_norms(m, 1e-2, seed=1, relative=relative))
        counts[layers] = (enter, leave, syncs[0])
        monkeypatch.undo()
    assert counts[2] == counts[6], counts
    enter, leave, syncs = counts[6]
    # draw: cat of the N(0, 1) parts (+ cat of |w| when relative); apply: cat of the clean copies, one foreach add;
    # measure: 3 cats, 3 casts to float64, 1 stack, one .cpu() of it; on the host (+3 .cpu() no-ops) one cast more
    assert enter == {"_foreach_add_": 1, "_to_copy": 4, "cat": 5 + relative, "stack": 1}, enter
    assert leave == {"_foreach_copy_": 1}, leave
    assert syncs == 4


def test_hf_fast_engine_measures_its_noise_without_copying_the_norms_again(policy, monkeypatch):
    model, tok = policy(6)
    hf = HF(fast=True)
    hf.setup(model, tok)
    syncs = host_copies(monkeypatch)
    enter, leave = block_ops(lambda: hf.noise(1e-2, seed=1))
    assert enter == {"_foreach_add_": 1, "_to_copy": 4, "cat": 5, "stack": 1}, enter  # as noisy_norms alone
    assert leave == {"_foreach_copy_": 1}, leave
    assert syncs[0] == 4  # one measurement, not two
    monkeypatch.undo()
    with noisy_norms(model, 1e-2, seed=1) as applied:  # the policy's own weights, the same draw
        expected = applied.realized.metrics()
    with hf.noise(1e-2, seed=1):
        assert hf.noise_metrics == expected  # the engine multiplies by exactly these weights
