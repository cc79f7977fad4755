"""vLLM RequestOutputs -> qerl Rollout, and the engine/policy mismatch (KL, truncated importance weights)."""
from __future__ import annotations

import torch
from torch import nn

from qerl.models.logprobs import stored_logprobs
from qerl.types import Rollout


def check_lengths(prompt_ids: list[list[int]], max_new_tokens: int, max_model_len: int) -> None:
    """A clear error when a prompt is empty or a prompt plus `max_new_tokens` exceeds the engine's length."""
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("VLLM.generate: every prompt needs at least one token.")
    longest = max(len(p) for p in prompt_ids)
    if longest + max_new_tokens > max_model_len:
        raise ValueError(
            f"VLLM: a prompt of {longest} tokens plus sampling.max_new_tokens={max_new_tokens} exceeds "
            f"rollout.init_args.max_model_len={max_model_len}; raise max_model_len or shorten prompts/completions.")


def rollout_from_outputs(outputs, prompt_ids: list[list[int]], n: int, pad_id: int, tokenizer, device) -> Rollout:
    """Rows prompt-major (`n` per prompt, in vLLM's completion order); log-probs of the sampled tokens."""
    rows = []
    for prompt, out in zip(prompt_ids, outputs):
        completions = sorted(out.outputs, key=lambda c: c.index)
        if len(completions) != n:
            raise RuntimeError(f"vLLM returned {len(completions)} completions for a prompt, expected n={n}.")
        for c in completions:
            ids = list(c.token_ids)
            logps = [float(d[t].logprob) if d is not None and t in d else 0.0 for d, t in zip(c.logprobs or [], ids)]
            rows.append((list(prompt), ids, logps, c.finish_reason == "length"))
    texts = [tokenizer.decode(r[1], skip_special_tokens=True) for r in rows]
    prompts, completions, logprobs, truncated = (list(column) for column in zip(*rows))
    return Rollout.from_rows(prompts, completions, logprobs, truncated, texts, n, pad_id, device)


class EngineOutputError(RuntimeError):
    """The vLLM engine returned numbers training cannot use; the message says what to change."""


def check_finite_logprobs(rollout: Rollout, served_as: str | None) -> None:
    """Stop with one line when the engine's log-probs of its own sampled tokens are not finite.

    Seen on an H200 with vllm 0.22: engines serving the base dense returned NaN for every token, which otherwise
    surfaces steps later as a "non-finite loss" that points at the learning rate."""
    mask = rollout.completion_mask.bool()
    bad = int((~torch.isfinite(rollout.logprobs) & mask).sum())
    if bad:
        raise EngineOutputError(
            f"VLLM: the engine (base served as {served_as}) returned non-finite log-probs for {bad} of "
            f"{int(mask.sum())} sampled tokens. Known with dense-served bases on CUDA (vllm 0.22): use an NVFP4 or "
            "MXFP4 base, which vLLM serves packed, or `rollout: HF`.")


@torch.no_grad()
def policy_logprobs(policy: nn.Module, rollout: Rollout, temperature: float, micro_batch_size: int = 8) -> torch.Tensor:
    """(R, T) log-probs of the rollout's completions under the policy as it is now (eval mode, no grad)."""
    was_training = policy.training
    policy.eval()
    try:
        return stored_logprobs(policy, rollout, micro_batch_size, temperature)
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


def mismatch(policy: nn.Module, rollout: Rollout, temperature: float, cap: float | None
             ) -> tuple[dict[str, float], torch.Tensor | None]:
    """Engine-vs-policy metrics and, with `cap`, truncated importance weights min(p_policy / p_engine, cap).

    `rollout/mismatch_kl` is the k3 estimate of KL(engine || policy) per generated token (>= 0);
    `rollout/mismatch_logprob_absdiff` the mean |log p_engine - log p_policy|.
    """
    mask = rollout.completion_mask.bool()
    train = policy_logprobs(policy, rollout, temperature)
    tokens = mask.sum().clamp(min=1)
    metrics = {k: v / float(tokens) for k, v in mismatch_sums(train, rollout.logprobs, mask).items()}
    if cap is None:
        return metrics, None
    ratio = torch.exp((train - rollout.logprobs).masked_fill(~mask, 0.0))
    weights = ratio.clamp(max=float(cap)).masked_fill(~mask, 0.0)
    metrics["rollout/tis_weight_mean"] = float(weights.sum() / tokens)
    metrics["rollout/tis_clipped_frac"] = float(((ratio > cap) & mask).sum() / tokens)
    return metrics, weights
