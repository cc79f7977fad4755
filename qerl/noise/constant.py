"""AQN at one fixed sigma for the whole run."""
from __future__ import annotations

from dataclasses import dataclass

from qerl.noise.base import NoiseSchedule, check_progress, check_sigma
from qerl.registry import NOISE_SCHEDULERS


@NOISE_SCHEDULERS.register(aliases=("fixed",))
@dataclass(frozen=True)
class Constant(NoiseSchedule):
    """The same sigma at every step (no noise-free first stage): sigma(step) = sigma.

    Args:
        sigma: the noise standard deviation, >= 0.
    """

    sigma: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sigma("Constant", "sigma", self.sigma)

    def sigma_at(self, step: int, total_steps: int) -> float:
        check_progress("Constant", step, total_steps)
        return float(self.sigma)
