"""Completion lengths for benchmarks on random weights, which never emit EOS.

A recipe's completions are ragged: most stop early, a few run to the cap. A benchmark that makes every
completion `new` tokens long over-counts generation and training alike; one that gives every completion the
same shorter length hides the long tail that decides how long a rollout's last decode steps run at a small batch.
`draw_lengths` gives each completion its own length from a stated distribution, and `LengthModelVLLM` asks vLLM
for exactly that many tokens per completion (`max_tokens` per request, `ignore_eos`).

The distributions (stated, not measured here: they are what the recipes' models are reported to write; the row
records the drawn lengths, so every number can be recomputed):

- `gsm8k` (7B GSM8K recipe, cap 4,096): log-normal with median 300 tokens and sigma 0.6 (a step-by-step
  GSM8K solution of Qwen2.5-7B-Instruct is a few hundred tokens), plus 2% of completions that run to the cap
  (repetition loops, which early RL from a base model produces). Mean ~435, p90 ~650.
- `dapo` (32B DAPO recipe, cap 8,192): log-normal with median 1,800 and sigma 0.7 (DAPO's Figure on response
  length: from ~1k tokens rising past 3k over training), plus 8% at the cap (DAPO's overlong share before the
  soft penalty bites). Mean ~2,800, p90 ~4,400.
- `fixed`: every completion is the cap long (the old behaviour).
"""
from __future__ import annotations

import math
import random

#: name -> (median, sigma of log-length, share at the cap)
DISTRIBUTIONS = {"gsm8k": (300.0, 0.6, 0.02), "dapo": (1800.0, 0.7, 0.08)}


def draw_lengths(kind: str, count: int, cap: int, seed: int = 0) -> list[int]:
    """`count` completion lengths in [1, cap] from distribution `kind` (`fixed`: all `cap`)."""
    if kind == "fixed":
        return [cap] * count
    if kind not in DISTRIBUTIONS:
        raise SystemExit(f"--lengths {kind!r}: expected one of fixed, {', '.join(DISTRIBUTIONS)}")
    median, sigma, at_cap = DISTRIBUTIONS[kind]
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        if rng.random() < at_cap:
            out.append(cap)
        else:
            out.append(max(1, min(cap, round(median * math.exp(rng.gauss(0.0, sigma))))))
    return out


def summary(lengths: list[int], cap: int) -> dict:
    """Mean, p50, p90, max and the share at the cap of drawn lengths."""
    ordered = sorted(lengths)

    def pick(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"mean": round(sum(ordered) / len(ordered), 1), "p50": pick(0.5), "p90": pick(0.9), "max": ordered[-1],
            "share_at_cap": round(sum(1 for v in ordered if v >= cap) / len(ordered), 3), "tokens": sum(ordered)}


def length_model_vllm(base_class, lengths: list[int]):
    """A subclass of the `VLLM` backend whose every completion stops at its drawn length (EOS ignored).

    vLLM has one `max_tokens` per request, so each prompt goes in `n` times with n=1 and its own length and seed;
    the engine's prefix cache shares the prompt's prefill between the copies, as it does for n > 1. The outputs
    are regrouped per prompt before the backend builds the Rollout."""

    class LengthModelVLLM(base_class):
        def stream_requests(self, prompt_ids, sampling, split=True):  # always one request per completion
            from vllm import SamplingParams

            requests, params, owners = [], [], []
            for i, prompt in enumerate(prompt_ids):
                for j in range(sampling.n):
                    k = (i * sampling.n + j) % len(lengths)
                    seed = None if sampling.seed is None else int(sampling.seed) + k
                    requests.append({"prompt_token_ids": list(map(int, prompt))})
                    params.append(SamplingParams(n=1, temperature=float(sampling.temperature),
                                                 top_p=float(sampling.top_p), max_tokens=lengths[k], ignore_eos=True,
                                                 seed=seed, logprobs=0))
                    owners.append(i)
            return requests, params, owners

        def request_outputs(self, prompt_ids, sampling):
            requests, params, _ = self.stream_requests(prompt_ids, sampling)
            flat = self.llm.generate(requests, params, lora_request=self.lora_request(), use_tqdm=False)
            n = sampling.n
            return [self.merge_outputs(flat[i * n:(i + 1) * n]) for i in range(len(prompt_ids))]

    return LengthModelVLLM
