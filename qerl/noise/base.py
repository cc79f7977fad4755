"""The noise-schedule extension point: sigma as a function of training progress."""
from __future__ import annotations

from abc import ABC, abstractmethod


class NoiseSchedule(ABC):
    """Maps (step, total_steps) to the AQN standard deviation sigma >= 0."""

    @abstractmethod
    def sigma_at(self, step: int, total_steps: int) -> float:
        """Sigma for optimizer step `step` (0-based) of a run of `total_steps`."""
