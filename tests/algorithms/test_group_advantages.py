"""Group-relative advantages and the dynamic-sampling group mask, against hand-computed numbers."""
from __future__ import annotations

import math

import pytest
import torch

from qerl.algorithms import DAPO, GRPO, DrGRPO
from qerl.algorithms.advantages import group_advantages, varied_groups


def test_one_group_of_four_uses_the_unbiased_std():
    # mean 0.5; deviations +-0.5; unbiased var = 4 * 0.25 / 3 = 1/3
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4)
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert adv.tolist() == pytest.approx([expected, -expected, -expected, expected], rel=1e-6)


def test_groups_are_normalised_separately_and_a_flat_group_gets_zero():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])  # group 1: mean 2, std 1; group 2: all equal
    adv = group_advantages(rewards, group_size=3, eps=0.0)
    assert adv.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0], abs=1e-7)
    adv_eps = group_advantages(rewards, group_size=3)  # default eps = 1e-4 is added to the std
    assert adv_eps[2].item() == pytest.approx(1.0 / 1.0001, rel=1e-6)


def test_without_std_division_advantages_are_centred_rewards():
    rewards = torch.tensor([2.0, 0.0, 0.0, 0.0, 10.0, 20.0])
    adv = group_advantages(rewards, group_size=2, scale=False)
    assert adv.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0, -5.0, 5.0])


def test_algorithms_pick_their_advantage_variant():
    rewards = torch.tensor([0.0, 4.0])  # mean 2, unbiased std = 2*sqrt(2)
    scaled = 2.0 / (2 * math.sqrt(2) + 1e-4)
    assert GRPO().advantages(rewards, 2).tolist() == pytest.approx([-scaled, scaled], rel=1e-6)
    assert DAPO().advantages(rewards, 2).tolist() == pytest.approx([-scaled, scaled], rel=1e-6)
    assert GRPO(scale_rewards=False).advantages(rewards, 2).tolist() == pytest.approx([-2.0, 2.0])
    assert DrGRPO().advantages(rewards, 2).tolist() == pytest.approx([-2.0, 2.0])


def test_advantages_come_back_float32_on_the_rewards_device():
    adv = group_advantages(torch.tensor([0, 1, 1, 1]), group_size=2)
    assert adv.dtype == torch.float32 and adv.shape == (4,)


@pytest.mark.parametrize("size", [1, 0, -2])
def test_group_size_below_two_names_sampling_n(size):
    with pytest.raises(ValueError, match=r"group_size=.*sampling\.n"):
        GRPO().advantages(torch.zeros(4), size)


def test_rewards_that_do_not_split_into_groups_are_refused():
    with pytest.raises(ValueError, match="5 rewards cannot be split into groups of group_size=2"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match=r"shape \(R,\)"):
        group_advantages(torch.zeros(2, 2), 2)


def test_varied_groups_marks_groups_with_any_reward_spread():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.2])
    assert varied_groups(rewards, 2).tolist() == [True, False, False, True]


def test_dapo_keeps_only_informative_groups_and_grpo_keeps_all():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    assert DAPO().keep_groups(rewards, 3).tolist() == [False, True, False]
    assert DAPO(dynamic_sampling=False).keep_groups(rewards, 3).tolist() == [True, True, True]
    assert GRPO().keep_groups(rewards, 3).tolist() == [True, True, True]
    with pytest.raises(ValueError, match="sampling.n"):
        DAPO().keep_groups(rewards, 1)
