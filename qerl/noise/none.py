"""The schedule that turns AQN off."""
from __future__ import annotations

from dataclasses import dataclass

from qerl.noise.base import NoiseSchedule, check_progress
from qerl.registry import NOISE_SCHEDULERS


@NOISE_SCHEDULERS.register(aliases=("none", "off", "disabled"))
@dataclass(frozen=True)
class NoNoise(NoiseSchedule):
    """No AQN: sigma(step) = 0 at every step, so no weight is ever touched."""

    def sigma_at(self, step: int, total_steps: int) -> float:
        check_progress("NoNoise", step, total_steps)
        return 0.0
