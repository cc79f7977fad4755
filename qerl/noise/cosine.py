"""AQN with a half-cosine decay over K stages."""
from __future__ import annotations

import math
from dataclasses import dataclass

from qerl.noise.base import StagedDecay
from qerl.registry import NOISE_SCHEDULERS


@NOISE_SCHEDULERS.register(aliases=("cos",))
@dataclass(frozen=True)
class Cosine(StagedDecay):
    """Cosine AQN decay over K equal stages: 0, then sigma_start easing down to sigma_end.

    Stage k of K (see `qerl.noise.base` for how steps map to stages), with t = (k - 1) / (K - 2):

        sigma_0 = 0
        sigma_k = sigma_end + (sigma_start - sigma_end) * (1 + cos(pi * t)) / 2    for k >= 1

    Arguments (`sigma_start`, `sigma_end`, `num_stages`): see `StagedDecay`; `sigma_end` may be 0.
    """

    @staticmethod
    def curve(start: float, end: float, t: float) -> float:
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
