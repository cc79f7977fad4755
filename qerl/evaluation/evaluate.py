"""Evaluation: prompts through a rollout backend, scored by a reward; accuracy, unbiased pass@k, lengths, speed.

Used by `qerl eval` (whole dataset, written to disk) and by `QeRLModule.validation_step` (held-out prompts
during `qerl fit`, logged as `val/...`). Pure bookkeeping: the model, adapter and backend are set up by the caller.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

from qerl.rewards.base import Reward
from qerl.training.scoring import score_rollout
from qerl.types import PromptBatch, SamplingConfig

_SEED_MIX = 1_000_003


@dataclass
class Completion:
    """One scored completion: which prompt and sample it is, its text, scores, length and whether it was cut off."""

    prompt_index: int
    sample_index: int
    prompt: str
    answer: str
    completion: str
    correct: bool
    reward: float
    scores: dict[str, float]
    length: int
    truncated: bool
    meta: dict = field(default_factory=dict)


@dataclass
class EvalTotals:
    """Generated tokens, generation wall seconds and this process's CPU seconds, summed over the batches."""

    tokens: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with `c` correct out of `n` samples: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}.")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def k_values(n: int) -> list[int]:
    """The k reported for n samples: 1, 2, 4, ... below n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def batch_seed(seed: int | None, first_prompt: int) -> int | None:
    """Sampling seed of the batch that starts at prompt `first_prompt` (None: unseeded)."""
    return None if seed is None else (int(seed) * _SEED_MIX + int(first_prompt)) % (2**63)


def evaluate_batch(rollout_backend, tokenizer, prompts: PromptBatch, rewards: list[Reward], sampling: SamplingConfig,
                   first_prompt: int = 0, accuracy_index: int = 0, totals: EvalTotals | None = None) -> list[Completion]:
    """`sampling.n` completions of each prompt, scored; prompt indices start at `first_prompt`.

    The batch's sampling seed is derived from `sampling.seed` and `first_prompt`, so a prompt's samples do not
    depend on the batches before it. Generation time and tokens are added to `totals`.
    """
    ids = tokenizer(list(prompts.prompts), add_special_tokens=False)["input_ids"]
    seeded = dataclasses.replace(sampling, stop=list(sampling.stop), seed=batch_seed(sampling.seed, first_prompt))
    start, cpu_start = time.perf_counter(), time.process_time()
    rollout = rollout_backend.generate(ids, seeded)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    rollout_backend.release_memory()
    scored = score_rollout(rewards, rollout, prompts, sampling.max_new_tokens, accuracy_index)
    lengths = rollout.lengths.tolist()
    if totals is not None:
        totals.tokens += int(sum(lengths))
        totals.seconds += seconds
        totals.cpu_seconds += cpu_seconds
    n = rollout.group_size
    metas = prompts.meta or [{}] * len(prompts)
    out = []
    for row in range(rollout.num_rows):
        g = row // n
        out.append(Completion(
            prompt_index=first_prompt + g, sample_index=row % n, prompt=prompts.prompts[g], answer=prompts.answers[g],
            completion=rollout.texts[row], correct=bool(scored.correct[row]), reward=float(scored.rewards[row]),
            scores={k: float(v[row]) for k, v in scored.scores.items()}, length=int(lengths[row]),
            truncated=bool(rollout.truncated[row]), meta=dict(metas[g])))
    return out


def evaluate_prompts(rollout_backend, tokenizer, prompts: PromptBatch, rewards: list[Reward], sampling: SamplingConfig,
                     batch_size: int = 16, accuracy_index: int = 0,
                     progress=None) -> tuple[list[Completion], EvalTotals]:
    """Every prompt through `evaluate_batch`, `batch_size` prompts at a time.

    `progress(done_prompts, total_prompts, records_so_far)`, if given, is called after every batch.
    """
    if batch_size < 1:
        raise ValueError(f"evaluate_prompts: batch_size must be >= 1, got {batch_size}.")
    totals, records = EvalTotals(), []
    meta = prompts.meta or [{}] * len(prompts)
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        part = PromptBatch(prompts=prompts.prompts[start:stop], answers=prompts.answers[start:stop],
                           meta=meta[start:stop])
        records.extend(evaluate_batch(rollout_backend, tokenizer, part, rewards, sampling, start, accuracy_index,
                                      totals))
        if progress is not None:
            progress(min(stop, len(prompts)), len(prompts), records)
    return records, totals


def summarize(records: list[Completion], totals: EvalTotals | None = None) -> dict[str, float]:
    """Metrics of scored completions (every prompt must have the same number of samples n).

    accuracy: mean correctness over all completions (pass@1 averaged over samples); `pass@k` for k in
    `k_values(n)`, unbiased, averaged over prompts; mean_length (generated tokens), truncated_frac,
    mean_reward, and tokens_per_s / generation_s / generation_cpu_s when `totals` is given.
    """
    if not records:
        raise ValueError("summarize: no completions to summarize.")
    per_prompt: dict[int, list[bool]] = {}
    for r in records:
        per_prompt.setdefault(r.prompt_index, []).append(r.correct)
    sizes = {len(v) for v in per_prompt.values()}
    if len(sizes) != 1:
        raise ValueError(f"summarize: prompts have different sample counts {sorted(sizes)}; pass@k needs one n.")
    n = sizes.pop()
    count = len(records)
    summary: dict[str, float] = {
        "num_prompts": float(len(per_prompt)),
        "n_samples": float(n),
        "num_completions": float(count),
        "accuracy": sum(r.correct for r in records) / count,
    }
    for k in k_values(n):
        summary[f"pass@{k}"] = sum(pass_at_k(n, sum(v), k) for v in per_prompt.values()) / len(per_prompt)
    summary["mean_length"] = sum(r.length for r in records) / count
    summary["truncated_frac"] = sum(r.truncated for r in records) / count
    summary["mean_reward"] = sum(r.reward for r in records) / count
    if totals is not None:
        summary["generated_tokens"] = float(totals.tokens)
        summary["generation_s"] = totals.seconds
        summary["tokens_per_s"] = totals.tokens / totals.seconds if totals.seconds > 0 else 0.0
        summary["generation_cpu_s"] = totals.cpu_seconds  # all threads of this process; on a shared CPU, steadier
    return summary
