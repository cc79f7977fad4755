"""The clipped surrogate, k3 KL and loss aggregations, against hand-computed numbers."""
from __future__ import annotations

import math

import pytest
import torch

from qerl.algorithms.surrogate import (
    AGGREGATIONS,
    clipped_policy_loss,
    clipped_surrogate,
    constant_normalizer,
    importance_ratio,
    k3_kl,
    sequence_mean,
    token_mean,
)

RATIOS = [0.5, 0.9, 1.0, 1.1, 1.5]


def _logprobs_with_ratios(ratios):
    """(1, T) log-probs whose ratio to old log-probs of -1 is exactly `ratios`."""
    old = torch.full((1, len(ratios)), -1.0)
    new = (old + torch.log(torch.tensor([ratios]))).requires_grad_(True)
    return new, old


@pytest.mark.parametrize(
    "adv, expected_loss, expected_grad",
    [
        # A > 0: min(r*A, clip(r, 0.8, 1.28)*A); above 1.28 the clipped branch wins and the gradient is 0
        (2.0, [-1.0, -1.8, -2.0, -2.2, -2.56], [-1.0, -1.8, -2.0, -2.2, 0.0]),
        # A < 0: below 0.8 the clipped branch wins (gradient 0); above 1.28 the unclipped one still counts
        (-2.0, [1.6, 1.8, 2.0, 2.2, 3.0], [0.0, 1.8, 2.0, 2.2, 3.0]),
    ],
)
def test_surrogate_clips_each_side_only_where_the_advantage_points(adv, expected_loss, expected_grad):
    new, old = _logprobs_with_ratios(RATIOS)
    mask = torch.ones_like(old)
    per_token = clipped_surrogate(importance_ratio(new, old, mask), torch.tensor([adv]), eps_low=0.2, eps_high=0.28)
    assert per_token[0].tolist() == pytest.approx(expected_loss, rel=1e-6)
    per_token.sum().backward()
    # d/dlogp of -r*A is -r*A; clipped tokens get none
    assert new.grad[0].tolist() == pytest.approx(expected_grad, rel=1e-6, abs=1e-7)


def test_token_level_advantages_are_accepted():
    new, old = _logprobs_with_ratios([1.0, 1.0])
    per_token = clipped_surrogate(importance_ratio(new, old, torch.ones(1, 2)), torch.tensor([[1.0, -3.0]]), 0.2, 0.2)
    assert per_token[0].tolist() == pytest.approx([-1.0, 3.0])


def test_padding_with_minus_inf_log_probs_cannot_make_nan():
    new = torch.tensor([[-0.5, float("-inf")]], requires_grad=True)
    old = torch.tensor([[-0.5, float("nan")]])
    mask = torch.tensor([[1, 0]])
    out = clipped_policy_loss(
        new, old, torch.tensor([1.0]), mask, eps_low=0.2, eps_high=0.2, aggregate=token_mean, beta=0.1,
        ref_logprobs=torch.tensor([[-0.5, float("-inf")]]),
    )
    assert out.loss.item() == pytest.approx(-1.0)
    out.loss.backward()
    assert torch.isfinite(new.grad).all()
    assert new.grad[0].tolist() == pytest.approx([-1.0, 0.0])


def test_k3_kl_matches_its_formula_and_is_zero_at_the_reference():
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.3]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.9]]))
    kl = k3_kl(logp, ref, torch.tensor([[1, 1, 0]]))
    # ref - logp = log(0.5): 0.5 - log(0.5) - 1 = 0.19315; equal: 0; masked: 0
    assert kl[0].tolist() == pytest.approx([0.5 - math.log(0.5) - 1.0, 0.0, 0.0], abs=1e-6)
    rnd = torch.randn(4, 7)
    assert (k3_kl(rnd, torch.randn(4, 7), torch.ones(4, 7)) >= 0).all()


PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])


def test_aggregations_by_hand():
    assert sequence_mean(PER_TOKEN, MASK).item() == pytest.approx((2.5 + 15.0) / 2)  # 8.75
    assert token_mean(PER_TOKEN, MASK).item() == pytest.approx(40.0 / 6)
    assert constant_normalizer(PER_TOKEN, MASK, max_completion_length=5).item() == pytest.approx(40.0 / (2 * 5))
    assert set(AGGREGATIONS) == {"sequence_mean", "token_mean", "constant"}


def test_masked_positions_do_not_count_even_when_they_hold_values():
    noisy = PER_TOKEN.clone()
    noisy[1, 2:] = 1e6
    for aggregate in AGGREGATIONS.values():
        assert aggregate(noisy, MASK, max_completion_length=4).item() == aggregate(
            PER_TOKEN, MASK, max_completion_length=4
        ).item()


@pytest.mark.parametrize("name", list(AGGREGATIONS))
def test_micro_batch_shares_sum_to_the_full_batch_loss(name):
    torch.manual_seed(0)
    per_token = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).long()
    mask[:, 0] = 1
    aggregate = AGGREGATIONS[name]
    full = aggregate(per_token, mask, max_completion_length=5)
    totals = {"num_sequences": 6, "num_tokens": float(mask.sum()), "max_completion_length": 5}
    parts = [aggregate(per_token[rows], mask[rows], **totals) for rows in (slice(0, 2), slice(2, 3), slice(3, 6))]
    assert sum(p.item() for p in parts) == pytest.approx(full.item(), rel=1e-6)


def test_empty_completion_contributes_zero_to_the_sequence_mean():
    per_token = torch.tensor([[4.0, 4.0], [9.0, 9.0]])
    assert sequence_mean(per_token, torch.tensor([[1, 1], [0, 0]])).item() == pytest.approx(2.0)


def test_constant_normaliser_refuses_completions_longer_than_it():
    with pytest.raises(ValueError, match="4 tokens but the Dr.GRPO normaliser max_completion_length is 3"):
        constant_normalizer(PER_TOKEN, MASK, max_completion_length=3)
    with pytest.raises(ValueError, match="max_completion_length >= 1"):
        constant_normalizer(PER_TOKEN, MASK)


def test_full_loss_value_and_metrics_by_hand():
    # row 0 (A=+1): ratios 0.5, 1.5 -> token losses -0.5, -1.2 (1.5 clipped to 1.2, high clip)
    # row 1 (A=-1): ratios 0.5, 1.0 (last token masked) -> 0.8 (0.5 clipped to 0.8, low clip), 1.0
    old = torch.full((2, 2), -1.0)
    new = old + torch.log(torch.tensor([[0.5, 1.5], [0.5, 1.0]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    ref = new.clone()
    ref[0, 0] = new[0, 0] + math.log(0.5)  # one token with k3 = 0.5 - log 0.5 - 1
    kl_tok = 0.5 - math.log(0.5) - 1.0
    out = clipped_policy_loss(
        new, old, torch.tensor([1.0, -1.0]), mask, eps_low=0.2, eps_high=0.2, aggregate=sequence_mean,
        beta=0.1, ref_logprobs=ref,
    )
    policy = ((-0.5 - 1.2) / 2 + 0.8 / 1) / 2
    kl_loss = (kl_tok / 2 + 0.0) / 2
    assert out.loss.item() == pytest.approx(policy + 0.1 * kl_loss, rel=1e-6)
    m = out.metrics
    assert m["policy_loss"] == pytest.approx(policy, rel=1e-6)
    assert m["kl_loss"] == pytest.approx(kl_loss, rel=1e-6)
    assert m["kl"] == pytest.approx(kl_tok / 3, rel=1e-6)  # token mean over the 3 real tokens
    assert m["clip_fraction_high"] == pytest.approx(1 / 3)
    assert m["clip_fraction_low"] == pytest.approx(1 / 3)
    assert m["clip_fraction"] == pytest.approx(2 / 3)
    assert m["ratio_mean"] == pytest.approx((0.5 + 1.5 + 0.5) / 3, rel=1e-6)
    assert (m["ratio_min"], m["ratio_max"]) == pytest.approx((0.5, 1.5), rel=1e-6)
    assert m["tokens"] == 3.0
    assert all(type(v) is float for v in m.values())


def test_no_token_in_the_micro_batch_gives_zero_loss_and_neutral_metrics():
    z = torch.zeros(2, 3, requires_grad=True)
    out = clipped_policy_loss(z, z.detach(), torch.ones(2), torch.zeros(2, 3), eps_low=0.2, eps_high=0.2,
                              aggregate=token_mean)
    assert out.loss.item() == 0.0
    assert out.metrics["ratio_min"] == out.metrics["ratio_max"] == 1.0 and out.metrics["tokens"] == 0.0


def test_kl_weight_without_reference_log_probs_is_a_clear_error():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="beta=0.1 .* needs ref_logprobs"):
        clipped_policy_loss(z, z, torch.ones(1), torch.ones(1, 2), eps_low=0.2, eps_high=0.2,
                            aggregate=token_mean, beta=0.1)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same \\(R, T\\) shape"):
        clipped_policy_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2), torch.ones(2, 3),
                            eps_low=0.2, eps_high=0.2, aggregate=token_mean)
    with pytest.raises(ValueError, match="advantages has 3 rows"):
        clipped_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3), torch.ones(2, 3),
                            eps_low=0.2, eps_high=0.2, aggregate=token_mean)


def test_loss_is_the_share_but_policy_loss_metric_is_the_micro_batch_own_value():
    z = torch.zeros(2, 2, requires_grad=True)
    out = clipped_policy_loss(z, z.detach(), torch.tensor([1.0, 3.0]), torch.ones(2, 2), eps_low=0.2, eps_high=0.2,
                              aggregate=sequence_mean, num_sequences=4, num_tokens=8.0)
    assert out.loss.item() == pytest.approx(-4.0 / 4)  # rows sum to -1 - 3, divided by the batch's 4 sequences
    assert out.metrics["loss"] == pytest.approx(-1.0)
    assert out.metrics["policy_loss"] == pytest.approx(-2.0)  # mean over this call's 2 rows
