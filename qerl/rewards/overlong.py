"""DAPO's soft overlong penalty, from each completion's token length."""
from __future__ import annotations

import torch

from qerl.algorithms.dapo import overlong_penalty
from qerl.registry import REWARDS
from qerl.rewards.base import Reward


@REWARDS.register()
class OverlongPenalty(Reward):
    """DAPO soft overlong penalty: 0 up to `max_new_tokens - buffer`, then linearly down to -1 at the limit.

    With L = `max_new_tokens` and C the buffer, a completion of n tokens scores
    0 if n <= L - C, (L - C - n) / C if L - C < n <= L, and -1 if n > L.

    Meta keys it needs (the module passes them): `lengths` - generated tokens per
    completion (list of ints, e.g. `Rollout.lengths.tolist()`), and `max_new_tokens`
    - the sampling cap (int, e.g. `SamplingConfig.max_new_tokens`).

    The same penalty as `DAPO(overlong_buffer=C)` shapes rewards with (`qerl.algorithms.dapo.overlong_penalty`).

    Args:
        buffer_tokens: C in tokens (0: only completions over the limit score -1); if None,
            `buffer_fraction * max_new_tokens` (at least one token).
        buffer_fraction: C as a fraction of `max_new_tokens` (DAPO: 4096 of 20480 = 0.2).
    """

    def __init__(self, weight: float = 1.0, buffer_tokens: int | None = None, buffer_fraction: float = 0.2) -> None:
        super().__init__(weight)
        if buffer_tokens is not None and buffer_tokens < 0:
            raise ValueError(f"OverlongPenalty: buffer_tokens must be >= 0, got {buffer_tokens}.")
        if not 0.0 < buffer_fraction <= 1.0:
            raise ValueError(f"OverlongPenalty: buffer_fraction must be in (0, 1], got {buffer_fraction}.")
        self.buffer_tokens = buffer_tokens
        self.buffer_fraction = float(buffer_fraction)

    def __call__(self, completions: list[str], answers: list[str], **meta) -> list[float]:
        missing = [key for key in ("lengths", "max_new_tokens") if key not in meta]
        if missing:
            raise ValueError(
                f"OverlongPenalty needs meta keys {missing}: call it as reward(completions, answers, "
                "lengths=[tokens per completion], max_new_tokens=N)."
            )
        lengths = [int(n) for n in meta["lengths"]]
        if len(lengths) != len(completions):
            raise ValueError(f"OverlongPenalty: {len(lengths)} lengths for {len(completions)} completions.")
        limit = int(meta["max_new_tokens"])
        if self.buffer_tokens is not None:
            buffer = min(float(self.buffer_tokens), float(limit))
        else:
            buffer = max(1.0, min(self.buffer_fraction * limit, float(limit)))
        return overlong_penalty(torch.tensor(lengths), limit, buffer).tolist()
