"""The reward extension point: pure text -> float, never `eval` of model text."""
from __future__ import annotations

from abc import ABC, abstractmethod


class Reward(ABC):
    """Scores completions against gold answers; the module sums `weight * score`.

    Args:
        weight: multiplier applied when rewards are summed.
    """

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = float(weight)

    @property
    def name(self) -> str:
        """Name used in logs (`reward/<name>`)."""
        return type(self).__name__

    @abstractmethod
    def __call__(self, completions: list[str], answers: list[str], **meta) -> list[float]:
        """One score per completion; must be fast, bounded and never raise on model text."""

    def check_batch(self, completions: list[str], answers: list[str]) -> None:
        """Raise a clear error when the caller passes lists of different lengths."""
        if len(completions) != len(answers):
            raise ValueError(
                f"{self.name}: got {len(completions)} completions but {len(answers)} gold answers; "
                "pass one gold answer per completion (repeat each prompt's answer for its group)."
            )
