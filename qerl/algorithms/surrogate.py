"""The PPO-style clipped surrogate, the k3 KL estimator and the ways to average token losses into one scalar.

All functions take (R, T) token tensors and an (R, T) mask (1 on completion
tokens). Masked positions never reach `exp`, so padding that holds -inf or NaN
log-probs cannot poison the loss or its gradient.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from qerl.types import LossOutput


def _bool_mask(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def importance_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """rho = exp(logp - old_logp) per token, float32; exactly 1 on masked positions."""
    keep = _bool_mask(mask)
    log_ratio = torch.where(keep, logprobs.float() - old_logprobs.float(), torch.zeros((), device=logprobs.device))
    return torch.exp(log_ratio)


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float) -> torch.Tensor:
    """Per-token loss -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A); `advantages` is (R,) or (R, T)."""
    adv = advantages.float().unsqueeze(1) if advantages.dim() == 1 else advantages.float()
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    return -torch.minimum(unclipped, clipped)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || ref): exp(ref - logp) - (ref - logp) - 1 (>= 0, 0 on masked positions)."""
    keep = _bool_mask(mask)
    delta = torch.where(keep, ref_logprobs.float() - logprobs.float(), torch.zeros((), device=logprobs.device))
    return torch.exp(delta) - delta - 1.0


# ------------------------------------------------------------------ aggregation
# Each turns (R, T) token losses (zero outside the mask) into the scalar for this micro-batch. The counts are
# those of the whole optimizer-step batch, so that the micro-batch scalars SUM to the full-batch loss; a count
# left None means the micro-batch is the batch.


Aggregation = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class BatchCounts:
    """Sizes of the optimizer-step batch an aggregation divides by (None: this call's rows are the batch)."""

    num_sequences: int | None = None
    num_tokens: float | None = None
    max_completion_length: int | None = None


def _aggregation(fn: Callable[[torch.Tensor, torch.Tensor, BatchCounts], torch.Tensor]) -> Aggregation:
    """`fn(masked, keep, counts)` as an aggregation `(per_token, mask, num_sequences, num_tokens,
    max_completion_length)`: positions outside the mask count as 0 whatever they hold."""

    @functools.wraps(fn)
    def aggregate(per_token: torch.Tensor, mask: torch.Tensor, num_sequences: int | None = None,
                  num_tokens: float | None = None, max_completion_length: int | None = None) -> torch.Tensor:
        keep = _bool_mask(mask)
        masked = torch.where(keep, per_token, torch.zeros((), device=per_token.device))
        return fn(masked, keep, BatchCounts(num_sequences, num_tokens, max_completion_length))

    return aggregate


@_aggregation
def sequence_mean(masked: torch.Tensor, keep: torch.Tensor, counts: BatchCounts) -> torch.Tensor:
    """Mean over each completion's tokens, then mean over completions (original GRPO)."""
    per_sequence = masked.sum(dim=1) / keep.sum(dim=1).clamp(min=1)
    return per_sequence.sum() / (counts.num_sequences if counts.num_sequences is not None else masked.shape[0])


@_aggregation
def token_mean(masked: torch.Tensor, keep: torch.Tensor, counts: BatchCounts) -> torch.Tensor:
    """Sum over every completion token of the batch divided by their number (DAPO's token-level loss)."""
    denominator = counts.num_tokens if counts.num_tokens is not None else keep.sum().clamp(min=1)
    return masked.sum() / denominator


@_aggregation
def constant_normalizer(masked: torch.Tensor, keep: torch.Tensor, counts: BatchCounts) -> torch.Tensor:
    """Sum over tokens divided by (completions x max_completion_length), a constant (Dr.GRPO)."""
    limit = counts.max_completion_length
    if limit is None or limit < 1:
        raise ValueError(
            "The 'constant' loss normaliser (Dr.GRPO) needs max_completion_length >= 1: set the algorithm's "
            "`max_completion_length` to `sampling.max_new_tokens` (or call algorithm.configure(sampling) at start-up)."
        )
    longest = int(keep.sum(dim=1).max()) if keep.numel() else 0
    if longest > limit:
        raise ValueError(
            f"A completion has {longest} tokens but the Dr.GRPO normaliser max_completion_length is "
            f"{limit}: set `max_completion_length` to at least `sampling.max_new_tokens`."
        )
    rows = counts.num_sequences if counts.num_sequences is not None else masked.shape[0]
    return masked.sum() / (rows * limit)


AGGREGATIONS: dict[str, Aggregation] = {
    "sequence_mean": sequence_mean,
    "token_mean": token_mean,
    "constant": constant_normalizer,
}


# ------------------------------------------------------------------ full loss
def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
    aggregate: Aggregation,
    beta: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
    max_completion_length: int | None = None,
) -> LossOutput:
    """Clipped surrogate (+ beta * k3 KL when beta > 0), aggregated, with detached float metrics.

    Metrics (masked token means unless noted): `loss` (the returned value, a
    share that sums over micro-batches), `policy_loss` and `kl_loss` (this
    call's rows aggregated on their own, so they average over micro-batches;
    kl_loss is 0 when beta = 0), `clip_fraction_low` (rho < 1 - eps_low
    with A < 0), `clip_fraction_high` (rho > 1 + eps_high with A > 0),
    `clip_fraction` (either), `ratio_mean`/`ratio_min`/`ratio_max`, `kl`
    (when ref log-probs are given, even with beta = 0), `tokens` (count).
    """
    if logprobs.shape != old_logprobs.shape or logprobs.shape != mask.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and mask "
            f"{tuple(mask.shape)} must all have the same (R, T) shape."
        )
    if advantages.shape[0] != logprobs.shape[0]:
        raise ValueError(f"advantages has {advantages.shape[0]} rows but logprobs has {logprobs.shape[0]}.")
    if beta > 0 and ref_logprobs is None:
        raise ValueError(
            f"beta={beta} adds a KL penalty to the reference policy, so loss() needs ref_logprobs "
            "(log-probs with the LoRA adapters disabled). Pass them, or set the algorithm's beta to 0."
        )
    keep = _bool_mask(mask)
    counts = {"num_sequences": num_sequences, "num_tokens": num_tokens, "max_completion_length": max_completion_length}
    ratio = importance_ratio(logprobs, old_logprobs, keep)
    per_token_policy = clipped_surrogate(ratio, advantages, eps_low, eps_high)
    policy_loss = aggregate(per_token_policy, keep, **counts)
    loss = policy_loss
    kl_per_token = None
    if ref_logprobs is not None:
        kl_per_token = k3_kl(logprobs, ref_logprobs, keep)
    kl_loss = torch.zeros((), device=logprobs.device)
    if beta > 0:
        kl_loss = aggregate(kl_per_token, keep, **counts)
        loss = policy_loss + beta * kl_loss

    with torch.no_grad():
        adv = advantages.float().unsqueeze(1) if advantages.dim() == 1 else advantages.float()
        r = ratio.detach()
        low = (r < 1.0 - eps_low) & (adv < 0) & keep
        high = (r > 1.0 + eps_high) & (adv > 0) & keep
        n_tok = keep.sum().clamp(min=1)
        big = torch.finfo(r.dtype).max
        stats = {
            "loss": loss.detach(),
            # this micro-batch's own aggregates (not its share of the batch), so they average across micro-batches
            "policy_loss": aggregate(per_token_policy.detach(), keep, max_completion_length=max_completion_length),
            "kl_loss": (
                aggregate(kl_per_token.detach(), keep, max_completion_length=max_completion_length)
                if beta > 0 else kl_loss.detach()
            ),
            "clip_fraction_low": low.sum() / n_tok,
            "clip_fraction_high": high.sum() / n_tok,
            "clip_fraction": (low | high).sum() / n_tok,
            "ratio_mean": torch.where(keep, r, 0.0).sum() / n_tok,
            "ratio_min": torch.where(keep, r, big).min(),
            "ratio_max": torch.where(keep, r, -big).max(),
            "tokens": keep.sum(),
        }
        if kl_per_token is not None:
            stats["kl"] = torch.where(keep, kl_per_token.detach(), 0.0).sum() / n_tok
        names = list(stats)
        metrics = dict(zip(names, torch.stack([v.float() for v in stats.values()]).tolist()))
    if metrics["tokens"] == 0:  # no completion token in this micro-batch: report a neutral ratio
        metrics["ratio_min"] = metrics["ratio_max"] = 1.0
    return LossOutput(loss=loss, metrics=metrics)
