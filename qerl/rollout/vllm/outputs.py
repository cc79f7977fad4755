"""vLLM RequestOutputs -> qerl Rollout, and the checks on them (the engine/policy mismatch is `qerl.models.mismatch`'s)."""
from __future__ import annotations

import torch

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
