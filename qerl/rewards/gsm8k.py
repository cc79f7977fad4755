"""GSM8K accuracy: the completion's final number equals the gold number exactly."""
from __future__ import annotations

import logging

from qerl.registry import REWARDS
from qerl.rewards.base import Reward
from qerl.rewards.numbers import extract_final_number
from qerl.rewards.warn_once import WarnOnce

log = logging.getLogger(__name__)


@REWARDS.register()
class GSM8KAccuracy(Reward):
    """1 if the final number (`<answer>`, `\\boxed{}`, `####`, "the answer is", last number) equals the gold, else 0.

    Numbers compare exactly as fractions after dropping commas, `$` and units, so
    `1,000`, `$1000.00` and `1000 dollars` all equal 1000 and `3/4` equals `0.75`.
    The gold may be a bare number or a full GSM8K solution ending in `#### N`.
    A gold answer with no number is logged once and its rows score 0.
    """

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__(weight)
        self._bad_gold = WarnOnce(log, "GSM8KAccuracy: gold answer {!r} has no number; its rows score 0.")

    def __call__(self, completions: list[str], answers: list[str], **meta) -> list[float]:
        self.check_batch(completions, answers)
        scores = []
        for completion, answer in zip(completions, answers):
            gold = extract_final_number(str(answer))
            if gold is None:
                self._bad_gold(answer)
                scores.append(0.0)
                continue
            pred = extract_final_number(completion) if isinstance(completion, str) else None
            scores.append(1.0 if pred is not None and pred == gold else 0.0)
        return scores
