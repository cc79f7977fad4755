"""AQN with a straight-line decay over K stages."""
from __future__ import annotations

from dataclasses import dataclass

from qerl.noise.base import StagedDecay
from qerl.registry import NOISE_SCHEDULERS


@NOISE_SCHEDULERS.register()
@dataclass(frozen=True)
class Linear(StagedDecay):
    """Linear AQN decay over K equal stages: 0, then sigma_start straight down to sigma_end.

    Stage k of K (see `qerl.noise.base` for how steps map to stages):

        sigma_0 = 0
        sigma_k = sigma_start + (sigma_end - sigma_start) * (k - 1) / (K - 2)    for k >= 1

    Arguments (`sigma_start`, `sigma_end`, `num_stages`): see `StagedDecay`; `sigma_end` may be 0.
    """

    @staticmethod
    def curve(start: float, end: float, t: float) -> float:
        return start + (end - start) * t
