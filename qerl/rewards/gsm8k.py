"""GSM8K accuracy: the completion states one final number, and it equals the gold number exactly."""
from __future__ import annotations

import logging

from qerl.registry import REWARDS
from qerl.rewards.base import Reward
from qerl.rewards.final_answer import answer_region, last_number, single_number, stated_number
from qerl.rewards.warn_once import WarnOnce

log = logging.getLogger(__name__)


def gold_number(answer: object):
    """The gold value: a bare number, or a GSM8K solution's number after its last `####`."""
    text = str(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return single_number(text.strip())


@REWARDS.register()
class GSM8KAccuracy(Reward):
    """1 if the stated final answer (`#### N`, "the answer is N", `\\boxed{N}`, `<answer>N</answer>`) is one number equal to the gold.

    Strict by default: the last stated answer after any `</think>` counts and must be
    exactly one number (units, `$`, `%` and thousands commas allowed); hedges score 0
    (`41 or 42`, `not 42`, `\\pm 2`, `6 \\times 7`, `3:4`, boxes that disagree), and so does
    a completion cut at `max_new_tokens` (meta `truncated`) whose answer sentence had not
    ended. Numbers compare exactly as fractions. A gold with no number is logged once and
    its rows score 0. See docs/rewards-and-datasets.md for the full policy.

    Args:
        flexible: lm-eval's "flexible-extract" instead: the last number anywhere in the
            completion, truncated or not (for evaluation parity, not for training).
    """

    def __init__(self, weight: float = 1.0, flexible: bool = False) -> None:
        super().__init__(weight)
        self.flexible = bool(flexible)
        self._bad_gold = WarnOnce(log, "GSM8KAccuracy: gold answer {!r} is not one number; its rows score 0.")

    def __call__(self, completions: list[str], answers: list[str], **meta) -> list[float]:
        self.check_batch(completions, answers)
        truncated = meta.get("truncated") or [False] * len(completions)
        if len(truncated) != len(completions):
            raise ValueError(f"GSM8KAccuracy: {len(truncated)} truncated flags for {len(completions)} completions.")
        scores = []
        for completion, answer, cut in zip(completions, answers, truncated):
            gold = gold_number(answer)
            if gold is None:
                self._bad_gold(answer)
                scores.append(0.0)
                continue
            scores.append(1.0 if self.predicted(completion, bool(cut)) == gold else 0.0)
        return scores

    def predicted(self, completion: object, truncated: bool = False):
        """The number this reward reads from one completion (a Fraction), or None."""
        if self.flexible:
            return last_number(completion)
        return stated_number(answer_region(completion), truncated=truncated)
