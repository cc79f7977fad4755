"""DAPO: overlong reward shaping, dynamic sampling settings and its token-level loss, by hand."""
from __future__ import annotations

import math

import pytest
import torch

from qerl.algorithms import DAPO
from qerl.algorithms.dapo import overlong_penalty
from qerl.types import SamplingConfig


def test_overlong_penalty_piecewise_by_hand():
    # L_max 100, L_cache 20: 0 up to 80, (80 - L) / 20 up to 100, -1 beyond
    lengths = torch.tensor([0, 50, 80, 81, 90, 99, 100, 101, 500])
    expected = [0.0, 0.0, 0.0, -0.05, -0.5, -0.95, -1.0, -1.0, -1.0]
    assert overlong_penalty(lengths, 100, 20).tolist() == pytest.approx(expected, abs=1e-6)


def test_zero_buffer_punishes_only_overruns():
    assert overlong_penalty(torch.tensor([0, 100, 101]), 100, 0).tolist() == [0.0, 0.0, -1.0]


def test_shape_rewards_adds_the_weighted_penalty():
    rewards = torch.tensor([1.0, 1.0, 0.0, 2.0])
    lengths = torch.tensor([10, 90, 95, 100])
    shaped = DAPO(overlong_buffer=20, overlong_penalty_factor=0.5).shape_rewards(rewards, lengths, 100)
    assert shaped.tolist() == pytest.approx([1.0, 1.0 - 0.25, 0.0 - 0.375, 2.0 - 0.5])
    off = DAPO(overlong_buffer=20, overlong_penalty_factor=0.0).shape_rewards(rewards, lengths, 100)
    assert off.tolist() == rewards.tolist()


def test_default_buffer_is_a_fifth_of_max_new_tokens():
    algo = DAPO()
    assert algo.buffer_for(20480) == 4096 and algo.buffer_for(256) == 51
    # 256 tokens: ramp from 205 to 256
    shaped = algo.shape_rewards(torch.zeros(3), torch.tensor([205, 230, 256]), 256)
    assert shaped.tolist() == pytest.approx([0.0, -25 / 51, -1.0], rel=1e-6)


def test_buffer_as_long_as_the_completion_fails_with_both_keys():
    with pytest.raises(ValueError, match=r"`overlong_buffer`=256 must be below `sampling.max_new_tokens`=256"):
        DAPO(overlong_buffer=256).configure(SamplingConfig(n=8, max_new_tokens=256))
    with pytest.raises(ValueError, match="overlong_buffer"):
        DAPO(overlong_buffer=300).shape_rewards(torch.zeros(2), torch.ones(2), 256)
    DAPO(overlong_buffer=300, overlong_penalty_factor=0.0).configure(SamplingConfig(n=8, max_new_tokens=256))


def test_dapo_defaults_follow_the_paper():
    algo = DAPO()
    assert (algo.eps_low, algo.eps_high, algo.beta, algo.overlong_penalty_factor) == (0.2, 0.28, 0.0, 1.0)
    assert algo.dynamic_sampling and algo.max_resample_rounds == 3
    assert DAPO(dynamic_sampling=False, max_resample_rounds=5).max_resample_rounds == 0


def test_dapo_loss_is_the_token_mean_with_clip_higher():
    old = torch.full((2, 3), -1.0)
    new = old + torch.log(torch.tensor([[1.0, 1.3, 1.5], [0.7, 1.0, 1.0]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = DAPO().loss(new, old, torch.tensor([2.0, -1.0]), mask)
    # row 0 (A=2): -2, -2.56 (1.3 -> 1.28), -2.56; row 1 (A=-1): 0.8 (0.7 -> 0.8), 1.0
    assert out.loss.item() == pytest.approx((-2.0 - 2.56 - 2.56 + 0.8 + 1.0) / 5, rel=1e-6)
    assert out.metrics["clip_fraction_high"] == pytest.approx(2 / 5)
    assert out.metrics["clip_fraction_low"] == pytest.approx(1 / 5)


def test_dapo_never_adds_kl_but_reports_it_when_given_reference_log_probs():
    new = torch.zeros(1, 2)
    ref = torch.full((1, 2), math.log(0.5))
    out = DAPO().loss(new, new, torch.ones(1), torch.ones(1, 2), ref_logprobs=ref)
    assert out.loss.item() == pytest.approx(-1.0)
    assert out.metrics["kl"] == pytest.approx(0.5 - math.log(0.5) - 1.0, rel=1e-6)


def test_dapo_micro_batches_sum_to_the_batch_token_mean():
    torch.manual_seed(1)
    new, old = torch.randn(4, 6), torch.randn(4, 6)
    mask = torch.ones(4, 6)
    mask[1, 3:] = 0
    mask[3, 1:] = 0
    adv = torch.tensor([1.0, -0.5, 0.25, -2.0])
    algo = DAPO()
    full = algo.loss(new, old, adv, mask).loss.item()
    totals = {"num_sequences": 4, "num_tokens": float(mask.sum())}
    halves = [algo.loss(new[s], old[s], adv[s], mask[s], **totals).loss.item() for s in (slice(0, 1), slice(1, 4))]
    assert sum(halves) == pytest.approx(full, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"eps_high": -0.1}, "eps_high"),
        ({"overlong_buffer": -1}, "overlong_buffer"),
        ({"overlong_penalty_factor": -0.5}, "overlong_penalty_factor"),
        ({"max_resample_rounds": -1}, "max_resample_rounds"),
        ({"num_iterations": 0}, "num_iterations"),
    ],
)
def test_bad_options_name_the_recipe_key(kwargs, key):
    with pytest.raises(ValueError, match=rf"DAPO: `{key}` must be .*algorithm\.init_args\.{key}"):
        DAPO(**kwargs)


def test_dapo_takes_no_kl_option():
    with pytest.raises(TypeError):
        DAPO(beta=0.1)  # DAPO drops the KL term; use GRPO(beta=...) for a KL penalty
