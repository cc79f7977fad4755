"""MATH-style accuracy: the answer as written (boxed first) is equivalent to the gold, judged by math-verify."""
from __future__ import annotations

import logging
import re

from qerl.registry import REWARDS
from qerl.rewards.base import Reward
from qerl.rewards.final_answer import answer_region, boxed_contents
from qerl.rewards.stated_answer import conflicting_blocks, final_statement, hedge_in
from qerl.rewards.verify_sandbox import DIFFERENT, EQUAL, GOLD_ERROR, NO_ANSWER, VerifySandbox
from qerl.rewards.warn_once import WarnOnce

log = logging.getLogger(__name__)

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TAG_RE = re.compile(r"<answer>(.{0,4000}?)</answer>", re.DOTALL | re.IGNORECASE)
_INTEGER_RE = re.compile(r"-?\d{1,30}")


def plainly_equal(source: str, gold: str) -> bool | None:
    """A verdict without the worker when it is plain: the one box holds the gold as written, or both are integers.

    None when math-verify has to judge (several boxes, anything but the same text or two integers).
    """
    boxes = boxed_contents(source) if "boxed" in source or "fbox" in source else []
    if len(boxes) != 1 or _BOX_RE.search(boxes[0][2]):
        return None
    pred = boxes[0][2].strip()
    if pred == gold:
        return True
    if _INTEGER_RE.fullmatch(pred) and _INTEGER_RE.fullmatch(gold):
        return int(pred) == int(gold)
    return None


def answer_source(completion: object, truncated: bool = False, gold: str = "") -> str | None:
    """What math-verify reads from a completion, or None when it states no answer or hedges.

    The answer region (after the last `</think>`; None while `<think>` is open) when it holds
    a `\\boxed{}` (boxed answers are read first; several boxes are one set); else the last `<answer>`
    block, if every block says the same; else the region as written - unless the completion was
    truncated at `max_new_tokens`: then only a box or a closed `<answer>` block counts. An unboxed
    answer must be one stated answer (`qerl.rewards.stated_answer`): a hedge against `gold` is None.
    """
    region = answer_region(completion)
    if region is None or not region.strip():
        return None
    if _BOX_RE.search(region):
        return region
    blocks = [m.group(1) for m in _TAG_RE.finditer(region)]
    if blocks:
        return None if conflicting_blocks(blocks) or hedge_in(blocks[-1], gold) else blocks[-1]
    if truncated or hedge_in(final_statement(region), gold):
        return None
    return region


@REWARDS.register()
class MathAccuracy(Reward):
    """1 if the answer as written (boxed first, then `<answer>`, then the text) is equivalent to the gold (math-verify).

    math-verify (Hugging Face) extracts the answer and compares it with the gold: numbers,
    fractions and floats (rounded to 6 decimals), expressions (sympy), equations and
    inequalities in any notation, sets, intervals, tuples, matrices, percentages and units.
    A single box holding the gold as written (or an integer) is decided at once; the rest
    runs in a worker process limited to `timeout_s` per answer (see `VerifySandbox`;
    rewards with the same limits share one worker). Only text after the last `</think>`
    is read. A gold answer that neither parses nor matches as text is logged once and its
    rows score 0. See docs/rewards-and-datasets.md for the policy and qerl's guards.

    Args:
        timeout_s: time limit per answer (soft inside the worker; the worker is killed at + 1 s).
        memory_mb: memory cap of the worker process.
    """

    def __init__(self, weight: float = 1.0, timeout_s: float = 1.0, memory_mb: int = 2048) -> None:
        super().__init__(weight)
        self.checker = VerifySandbox.shared(timeout_s=timeout_s, memory_mb=memory_mb)
        self._bad_gold = WarnOnce(log, "MathAccuracy: gold answer {!r} cannot be parsed; its rows score 0 "
                                       "unless the prediction matches it as text.")
        self.verdicts: dict[str, int] = {}

    def __call__(self, completions: list[str], answers: list[str], **meta) -> list[float]:
        self.check_batch(completions, answers)
        truncated = meta.get("truncated") or [False] * len(completions)
        if len(truncated) != len(completions):
            raise ValueError(f"MathAccuracy: {len(truncated)} truncated flags for {len(completions)} completions.")
        return [self.score(c, a, bool(t)) for c, a, t in zip(completions, answers, truncated)]

    def score(self, completion: str, answer: str, truncated: bool = False) -> float:
        """1.0 or 0.0 for one completion."""
        answer = str(answer).strip()
        if not answer:
            self._bad_gold(answer)
            return self._count(GOLD_ERROR)
        source = answer_source(completion, truncated, answer)
        if source is None:
            return self._count(NO_ANSWER)
        plain = plainly_equal(source, answer)
        if plain is not None:
            return self._count(EQUAL, 1.0) if plain else self._count(DIFFERENT)
        verdict = self.checker.judge(source, answer)
        if verdict == GOLD_ERROR:
            self._bad_gold(answer)
        return self._count(verdict, 1.0 if verdict == EQUAL else 0.0)

    def _count(self, verdict: str, value: float = 0.0) -> float:
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1
        return value
