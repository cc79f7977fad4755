"""GRPO and Dr.GRPO as classes: options, start-up checks and their losses by hand."""
from __future__ import annotations

import math

import pytest
import torch

from qerl.algorithms import GRPO, DrGRPO
from qerl.types import SamplingConfig

OLD = torch.full((2, 3), -2.0)
RATIOS = torch.tensor([[1.0, 1.5, 1.0], [0.5, 1.0, 1.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ADV = torch.tensor([1.0, -1.0])
# token losses: row 0 (A=+1) -1, -min(1.5, 1.2) = -1.2, -1; row 1 (A=-1) -min(-0.5, -0.8) = 0.8, 1, (masked)
ROW0, ROW1 = [-1.0, -1.2, -1.0], [0.8, 1.0]


def _new():
    return (OLD + torch.log(RATIOS)).requires_grad_(True)


def test_grpo_sequence_mean_by_hand():
    out = GRPO().loss(_new(), OLD, ADV, MASK)
    assert out.loss.item() == pytest.approx((sum(ROW0) / 3 + sum(ROW1) / 2) / 2, rel=1e-6)


def test_grpo_token_mean_by_hand():
    out = GRPO(loss_aggregation="token_mean").loss(_new(), OLD, ADV, MASK)
    assert out.loss.item() == pytest.approx((sum(ROW0) + sum(ROW1)) / 5, rel=1e-6)


def test_grpo_constant_normaliser_by_hand():
    out = GRPO(loss_aggregation="constant", max_completion_length=4).loss(_new(), OLD, ADV, MASK)
    assert out.loss.item() == pytest.approx((sum(ROW0) + sum(ROW1)) / (2 * 4), rel=1e-6)


def test_grpo_eps_high_widens_only_the_upper_clip():
    # with eps_high 0.6 the 1.5 ratio is no longer clipped: -1.5 instead of -1.2
    out = GRPO(eps_high=0.6, loss_aggregation="token_mean").loss(_new(), OLD, ADV, MASK)
    assert out.loss.item() == pytest.approx((-1.0 - 1.5 - 1.0 + 0.8 + 1.0) / 5, rel=1e-6)
    assert out.metrics["clip_fraction_high"] == 0.0 and out.metrics["clip_fraction_low"] == pytest.approx(1 / 5)


def test_grpo_kl_term_is_added_with_beta():
    new = _new()
    ref = new.detach() + math.log(0.5)  # every token: k3 = 0.5 - log(0.5) - 1
    k3 = 0.5 - math.log(0.5) - 1.0
    plain = GRPO().loss(new, OLD, ADV, MASK).loss.item()
    out = GRPO(beta=0.04).loss(new, OLD, ADV, MASK, ref_logprobs=ref)
    assert out.loss.item() == pytest.approx(plain + 0.04 * k3, rel=1e-6)
    assert out.metrics["kl"] == pytest.approx(k3, rel=1e-6)


def test_on_policy_gradient_is_the_length_normalised_policy_gradient():
    # num_iterations = 1: old = logprobs.detach(), ratio 1 everywhere -> d loss / d logp_t = -A_i / |o_i| / G
    new = torch.zeros(2, 3, requires_grad=True)
    GRPO().loss(new, new.detach(), ADV, MASK).loss.backward()
    assert new.grad[0].tolist() == pytest.approx([-1 / 6] * 3, rel=1e-6)
    assert new.grad[1].tolist() == pytest.approx([1 / 4, 1 / 4, 0.0], rel=1e-6)


def test_drgrpo_is_unscaled_with_a_constant_normaliser():
    algo = DrGRPO(max_completion_length=4)
    assert algo.advantages(torch.tensor([1.0, 3.0, 0.0, 0.0]), 2).tolist() == [-1.0, 1.0, 0.0, 0.0]
    out = algo.loss(_new(), OLD, ADV, MASK)
    assert out.loss.item() == pytest.approx((sum(ROW0) + sum(ROW1)) / (2 * 4), rel=1e-6)
    # same numbers as GRPO configured the Dr.GRPO way
    twin = GRPO(scale_rewards=False, loss_aggregation="constant", max_completion_length=4)
    assert twin.loss(_new(), OLD, ADV, MASK).loss.item() == pytest.approx(out.loss.item())


def test_configure_fills_the_constant_normaliser_from_max_new_tokens():
    algo = DrGRPO()
    algo.configure(SamplingConfig(n=4, max_new_tokens=64))
    assert algo.max_completion_length == 64
    with pytest.raises(ValueError, match="max_completion_length.*=32 is below `sampling.max_new_tokens`=64"):
        DrGRPO(max_completion_length=32).configure(SamplingConfig(n=4, max_new_tokens=64))
    with pytest.raises(ValueError, match="below `sampling.max_new_tokens`"):
        GRPO(loss_aggregation="constant", max_completion_length=8).configure(SamplingConfig(n=2, max_new_tokens=9))


def test_constant_normaliser_without_a_length_says_what_to_set():
    with pytest.raises(ValueError, match="max_completion_length"):
        DrGRPO().loss(_new(), OLD, ADV, MASK)


@pytest.mark.parametrize("cls", [GRPO, DrGRPO])
def test_group_of_one_fails_at_start_up_naming_sampling_n(cls):
    with pytest.raises(ValueError, match=r"group_size=1.*`sampling\.n`"):
        cls().configure(SamplingConfig(n=1))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"eps_low": -0.1}, "eps_low"),
        ({"eps_low": 1.0}, "eps_low"),
        ({"eps_high": -0.01}, "eps_high"),
        ({"beta": -1.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"num_iterations": 0}, "num_iterations"),
        ({"num_iterations": 1.5}, "num_iterations"),
        ({"loss_aggregation": "seq_mean"}, "loss_aggregation"),
        ({"max_completion_length": 0}, "max_completion_length"),
        ({"eps": -1e-4}, "eps"),
    ],
)
def test_bad_options_name_the_recipe_key(kwargs, key):
    with pytest.raises(ValueError, match=rf"GRPO: `{key}` must be .*algorithm\.init_args\.{key}"):
        GRPO(**kwargs)


def test_options_are_kept_as_attributes_the_module_reads():
    algo = GRPO(beta=0.04, num_iterations=2)
    assert (algo.beta, algo.num_iterations, algo.max_resample_rounds) == (0.04, 2, 0)
    assert DrGRPO(eps_low=0.1).eps_low == 0.1
