"""Contract every ALGORITHMS entry meets (built-ins and plugins alike)."""
from __future__ import annotations

import inspect
import math

import pytest
import torch

from qerl.algorithms.base import Algorithm
from qerl.registry import ALGORITHMS
from qerl.types import LossOutput, SamplingConfig

NAMES = ALGORITHMS.names()
SAMPLING = SamplingConfig(n=4, max_new_tokens=8)


def _build(name: str) -> Algorithm:
    algo = ALGORITHMS.get(name)()  # every algorithm is buildable from its defaults (YAML class_path only)
    algo.configure(SAMPLING)
    return algo


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows, width = 8, SAMPLING.max_new_tokens
    logprobs = (-torch.rand(rows, width, generator=g) * 3).requires_grad_(True)
    old = logprobs.detach() + 0.3 * torch.randn(rows, width, generator=g)
    ref = logprobs.detach() + 0.3 * torch.randn(rows, width, generator=g)
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    return logprobs, old, ref, mask, lengths, rewards


def test_the_builtins_are_registered():
    assert {"GRPO", "DAPO", "DrGRPO"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_entry_is_a_documented_algorithm(name):
    info = ALGORITHMS.info(name)
    assert issubclass(info.cls, Algorithm)
    assert info.summary, f"{name} needs a one-line docstring (it is its line in `qerl list`)"
    params = inspect.signature(info.cls.loss).parameters
    assert {"num_sequences", "num_tokens"} <= set(params), "loss() must accept the micro-batch totals"


@pytest.mark.parametrize("name", NAMES)
def test_module_facing_attributes(name):
    algo = _build(name)
    assert isinstance(algo.num_iterations, int) and algo.num_iterations >= 1
    assert isinstance(algo.beta, float) and algo.beta >= 0
    assert isinstance(algo.max_resample_rounds, int) and algo.max_resample_rounds >= 0


@pytest.mark.parametrize("name", NAMES)
def test_advantages_are_finite_centred_per_group_and_zero_for_flat_groups(name):
    algo = _build(name)
    rewards = _batch()[-1]
    adv = algo.advantages(rewards, SAMPLING.n)
    assert adv.shape == rewards.shape and torch.isfinite(adv).all()
    assert adv.view(-1, SAMPLING.n).sum(dim=1).abs().max() < 1e-5
    assert adv[4:].abs().max() == 0  # the second group is flat
    assert adv[0] > 0 > adv[1]


@pytest.mark.parametrize("name", NAMES)
def test_group_size_one_is_refused_naming_sampling_n(name):
    with pytest.raises(ValueError, match=r"sampling\.n"):
        ALGORITHMS.get(name)().configure(SamplingConfig(n=1))
    with pytest.raises(ValueError, match=r"sampling\.n"):
        _build(name).advantages(torch.zeros(4), 1)


@pytest.mark.parametrize("name", NAMES)
def test_reward_hooks_keep_shapes(name):
    algo = _build(name)
    *_, lengths, rewards = _batch()
    shaped = algo.shape_rewards(rewards, lengths, SAMPLING.max_new_tokens)
    assert shaped.shape == rewards.shape and torch.isfinite(shaped).all()
    keep = algo.keep_groups(rewards, SAMPLING.n)
    assert keep.dtype == torch.bool and keep.shape == (2,) and bool(keep[0])


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_a_differentiable_scalar_with_float_metrics(name):
    algo = _build(name)
    logprobs, old, ref, mask, _lengths, rewards = _batch()
    out = algo.loss(logprobs, old, algo.advantages(rewards, SAMPLING.n), mask, ref_logprobs=ref)
    assert isinstance(out, LossOutput) and out.loss.dim() == 0 and math.isfinite(out.loss.item())
    out.loss.backward()
    assert torch.isfinite(logprobs.grad).all() and logprobs.grad.abs().sum() > 0
    assert (logprobs.grad[mask == 0] == 0).all(), "padding must get no gradient"
    assert all(type(v) is float and math.isfinite(v) for v in out.metrics.values())
    assert {"clip_fraction", "clip_fraction_low", "clip_fraction_high", "ratio_mean", "kl"} <= set(out.metrics)


@pytest.mark.parametrize("name", NAMES)
def test_on_policy_with_zero_advantages_costs_nothing(name):
    algo = _build(name)
    logprobs, _, _, mask, _, _ = _batch()
    out = algo.loss(logprobs, logprobs.detach(), torch.zeros(8), mask, ref_logprobs=logprobs.detach())
    assert out.loss.item() == 0.0 and out.metrics["ratio_mean"] == pytest.approx(1.0)


@pytest.mark.parametrize("name", NAMES)
def test_micro_batch_losses_sum_to_the_full_batch_loss(name):
    algo = _build(name)
    logprobs, old, ref, mask, _, rewards = _batch(3)
    adv = algo.advantages(rewards, SAMPLING.n)
    full = algo.loss(logprobs, old, adv, mask, ref_logprobs=ref).loss.item()
    totals = {"num_sequences": 8, "num_tokens": float(mask.sum())}
    parts = [
        algo.loss(logprobs[s], old[s], adv[s], mask[s], ref_logprobs=ref[s], **totals).loss.item()
        for s in (slice(0, 3), slice(3, 8))
    ]
    assert sum(parts) == pytest.approx(full, rel=1e-5, abs=1e-7)
