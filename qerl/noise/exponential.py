"""The paper's AQN schedule: K stages, no noise first, then a geometric decay."""
from __future__ import annotations

from dataclasses import dataclass

from qerl.noise.base import StagedDecay, check_progress
from qerl.registry import NOISE_SCHEDULERS


@NOISE_SCHEDULERS.register(aliases=("exp", "geometric"))
@dataclass(frozen=True)
class Exponential(StagedDecay):
    """Geometric AQN decay over K equal stages (QeRL default): 0, then sigma_start down to sigma_end.

    Stage k of K (see `qerl.noise.base` for how steps map to stages):

        sigma_0 = 0
        sigma_k = sigma_start * (sigma_end / sigma_start) ** ((k - 1) / (K - 2))    for k >= 1

    With the defaults the ten stages give 0, 1e-2, 5.62e-3, 3.16e-3, 1.78e-3, 1e-3,
    5.62e-4, 3.16e-4, 1.78e-4, 1e-4. A geometric decay cannot reach 0, so sigma_end
    must be > 0 unless sigma_start is 0 too.

    Args:
        sigma_start: sigma of stage 1 (the first noisy stage).
        sigma_end: sigma of the last stage; must not exceed sigma_start.
        num_stages: K, the number of equal stages (>= 2), stage 0 included.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if float(self.sigma_end) == 0 and float(self.sigma_start) > 0:
            raise ValueError(
                f"Exponential: sigma_end={self.sigma_end!r} cannot be reached by a geometric decay from "
                f"sigma_start={self.sigma_start!r}; give sigma_end > 0, or use Linear/Cosine to decay to 0."
            )

    def sigma_at(self, step: int, total_steps: int) -> float:
        if self.sigma_start == 0:
            check_progress("Exponential", step, total_steps)
            return 0.0
        return super().sigma_at(step, total_steps)

    @staticmethod
    def curve(start: float, end: float, t: float) -> float:
        return start * (end / start) ** t
