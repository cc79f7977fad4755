"""MATH-style accuracy: the last `\\boxed{}` answer is equivalent to the gold answer."""
from __future__ import annotations

import logging

from qerl.registry import REWARDS
from qerl.rewards.base import Reward
from qerl.rewards.equivalence import EQUAL, GOLD_ERROR, SympyEquivalence
from qerl.rewards.latex import last_boxed, normalize_answer
from qerl.rewards.numbers import MAX_TEXT_CHARS, parse_plain_number
from qerl.rewards.warn_once import WarnOnce

log = logging.getLogger(__name__)


def predicted_answer(completion: str) -> str | None:
    """The last `\\boxed{...}` of a completion, else the last `<answer>...</answer>` block, else None."""
    tail = completion[-MAX_TEXT_CHARS:]
    boxed = last_boxed(tail)
    if boxed is not None:
        return boxed
    end = tail.rfind("</answer>")
    start = tail.rfind("<answer>", 0, end) if end != -1 else -1
    return tail[start + len("<answer>"):end] if start != -1 else None


@REWARDS.register()
class MathAccuracy(Reward):
    """1 if the last `\\boxed{}` answer equals the gold after normalisation, numerically or symbolically (sympy).

    Steps: take the last `\\boxed{...}` (nested braces; else the last `<answer>` block),
    normalise both sides (spaces, `\\left`/`\\right`, `\\dfrac`, degrees, units, `x=`),
    compare as text, then as exact numbers, then with sympy in a worker process
    limited to `timeout_s` per answer (see `SympyEquivalence`; rewards with the same
    limits share one worker). A gold answer that neither matches as text nor parses
    is logged once and its rows score 0.

    Args:
        timeout_s: time limit per answer for the sympy check.
        memory_mb: memory cap of the sympy worker process.
    """

    def __init__(self, weight: float = 1.0, timeout_s: float = 1.0, memory_mb: int = 2048) -> None:
        super().__init__(weight)
        self.checker = SympyEquivalence.shared(timeout_s=timeout_s, memory_mb=memory_mb)
        self._bad_gold = WarnOnce(log, "MathAccuracy: gold answer {!r} cannot be parsed; its rows score 0 "
                                       "unless the prediction matches it as text.")
        self.verdicts: dict[str, int] = {}

    def __call__(self, completions: list[str], answers: list[str], **meta) -> list[float]:
        self.check_batch(completions, answers)
        return [self.score(c, a) for c, a in zip(completions, answers)]

    def score(self, completion: str, answer: str) -> float:
        """1.0 or 0.0 for one completion."""
        answer = str(answer)
        gold = normalize_answer(last_boxed(answer) or answer)
        if gold is None:
            self._bad_gold(answer)
            return self._count("gold_error")
        raw = predicted_answer(completion) if isinstance(completion, str) else None
        pred = normalize_answer(raw) if raw is not None else None
        if pred is None:
            return self._count("no_answer")
        if pred == gold:
            return self._count("equal", 1.0)
        p, g = parse_plain_number(pred), parse_plain_number(gold)
        if p is not None and g is not None:
            return self._count("equal", 1.0) if p == g else self._count("different")
        verdict = self.checker.compare(pred, gold)
        if verdict == GOLD_ERROR:
            self._bad_gold(answer)
        return self._count(verdict, 1.0 if verdict == EQUAL else 0.0)

    def _count(self, verdict: str, value: float = 0.0) -> float:
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1
        return value
