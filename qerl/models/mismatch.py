"""The engine/policy mismatch of a rollout: per-token KL and |log-prob difference| between the log-probs a rollout
backend sampled with (`Rollout.logprobs`) and the policy's, and truncated importance weights.

Neutral ground: the vLLM backend measures it after generating, the update's forward (`qerl.training.update`) while
it runs the weights that generated.
"""
from __future__ import annotations

import torch
from torch import nn

from qerl.models.logprobs import stored_logprobs
from qerl.types import Rollout


@torch.no_grad()
def policy_logprobs(policy: nn.Module, rollout: Rollout, temperature: float, micro_batch_size: int = 8,
                    layout=None) -> torch.Tensor:
    """(R, T) log-probs of the rollout's completions under the policy as it is now (eval mode, no grad); `layout`:
    the update's (`QeRLModule(pack_groups=...)`), default padded rows."""
    was_training = policy.training
    policy.eval()
    try:
        return stored_logprobs(policy, rollout, micro_batch_size, temperature, layout=layout)
    finally:
        policy.train(was_training)


def mismatch_sums(policy: torch.Tensor, engine: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Token sums (masked) of the k3 estimate of KL(engine || policy) and of |log p_engine - log p_policy|, from the
    two sides' log-probs of the sampled tokens; `mismatch` divides them by the tokens, and the update's forward
    (`TrainBatch.measure_mismatch`) adds them up over micro-batches."""
    keep = mask.bool()
    diff = (policy.detach().float() - engine.float()).masked_fill(~keep, 0.0)  # log(p_policy / p_engine)
    k3 = (torch.exp(diff) - 1 - diff).masked_fill(~keep, 0.0)
    kl, absdiff = torch.stack([k3.sum(), diff.abs().sum()]).tolist()  # one device sync
    return {"rollout/mismatch_kl": kl, "rollout/mismatch_logprob_absdiff": absdiff}


def mismatch(policy: nn.Module, rollout: Rollout, temperature: float, cap: float | None, layout=None
             ) -> tuple[dict[str, float], torch.Tensor | None]:
    """Engine-vs-policy metrics and, with `cap`, truncated importance weights min(p_policy / p_engine, cap).

    `rollout/mismatch_kl` is the k3 estimate of KL(engine || policy) per generated token (>= 0);
    `rollout/mismatch_logprob_absdiff` the mean |log p_engine - log p_policy|.
    """
    mask = rollout.completion_mask.bool()
    train = policy_logprobs(policy, rollout, temperature, layout=layout)
    tokens = mask.sum().clamp(min=1)
    metrics = {k: v / float(tokens) for k, v in mismatch_sums(train, rollout.logprobs, mask).items()}
    if cap is None:
        return metrics, None
    ratio = torch.exp((train - rollout.logprobs).masked_fill(~mask, 0.0))
    weights = ratio.clamp(max=float(cap)).masked_fill(~mask, 0.0)
    metrics["rollout/tis_weight_mean"] = float(weights.sum() / tokens)
    metrics["rollout/tis_clipped_frac"] = float(((ratio > cap) & mask).sum() / tokens)
    return metrics, weights
