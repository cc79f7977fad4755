"""The `<think>...</think><answer>...</answer>` format reward (QeRL gives it weight 0.2)."""
from __future__ import annotations

from qerl.registry import REWARDS
from qerl.rewards.base import Reward

TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def tag_positions(text: str) -> list[int] | None:
    """Positions of the first `<think>`, then `</think>`, `<answer>`, `</answer>` in order, or None."""
    positions, start = [], 0
    for tag in TAGS:
        at = text.find(tag, start)
        if at == -1:
            return None
        positions.append(at)
        start = at + len(tag)
    return positions


@REWARDS.register()
class ThinkAnswerFormat(Reward):
    """Strict format: the whole completion is `<think>...</think>` then `<answer>...</answer>`, nothing else.

    Each tag appears exactly once; only whitespace may sit before `<think>`, between
    `</think>` and `<answer>`, and after `</answer>`; both blocks are non-empty.
    Scores 1 or 0; the default weight 0.2 is QeRL's format reward.
    """

    def __init__(self, weight: float = 0.2) -> None:
        super().__init__(weight)

    def __call__(self, completions: list[str], answers: list[str], **meta) -> list[float]:
        return [1.0 if isinstance(c, str) and self.matches(c) else 0.0 for c in completions]

    @staticmethod
    def matches(text: str) -> bool:
        if any(text.count(tag) != 1 for tag in TAGS):
            return False
        think, think_end, answer, answer_end = tag_positions(text) or (None,) * 4
        if think is None:
            return False
        return (
            not text[:think].strip()
            and not text[think_end + len("</think>"):answer].strip()
            and not text[answer_end + len("</answer>"):].strip()
            and bool(text[think + len("<think>"):think_end].strip())
            and bool(text[answer + len("<answer>"):answer_end].strip())
        )


@REWARDS.register()
class SoftThinkAnswerFormat(Reward):
    """Soft format: a `<think>...</think>` block followed somewhere later by an `<answer>...</answer>` block.

    Text around and between the blocks is allowed. Scores 1 or 0; default weight 0.2.
    """

    def __init__(self, weight: float = 0.2) -> None:
        super().__init__(weight)

    def __call__(self, completions: list[str], answers: list[str], **meta) -> list[float]:
        return [1.0 if isinstance(c, str) and tag_positions(c) is not None else 0.0 for c in completions]
