"""The noise-schedule extension point: sigma as a function of training progress.

Staged schedules (`Exponential`, `Linear`, `Cosine`) split a run of `total_steps`
optimizer steps into `num_stages` (K) equal stages. Step `s` lies in stage

    k = min(K - 1, floor(s * K / total_steps))

(steps past the end stay in the last stage). Stage 0 is noise-free; stage 1 is
exactly `sigma_start` and stage K - 1 exactly `sigma_end`. In between, a decay
is evaluated at the stage's progress

    t_k = (k - 1) / (K - 2)        (t = 0 when K = 2: the one noisy stage gets sigma_start)

so every decay shares the same stage boundaries and end points.

Every schedule also takes `relative` (keyword only, default False). Absolute noise adds Z ~ N(0, sigma^2) to a
norm weight w, which multiplies the following rows by (1 + Z/w): its effect depends on the model's norm
magnitudes. Relative noise draws Z = sigma * |w| * N(0, 1) per channel, so every row gets (1 +- sigma * N(0, 1))
whatever the model (see `qerl.noise.inject.noisy_norms`).
"""
from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class NoiseDraw:
    """The AQN noise of one training step, as `NoiseCallback` publishes it on the module (`noise_draw`).

    Attributes:
        sigma: the step's sigma (0: no noise).
        seed: the step's noise seed, shared by every consumer of the step so all draw the same Z.
        in_training: also wrap the training forward (and backward) in the noise, not only the rollout.
        relative: sigma is relative to each channel's norm weight (Z = sigma * |w| * N(0, 1)); the schedule's
            `relative`.
    """

    sigma: float = 0.0
    seed: int | None = None
    in_training: bool = False
    relative: bool = False


@dataclass(frozen=True)
class NoiseSchedule(ABC):
    """Maps (step, total_steps) to the AQN standard deviation sigma >= 0.

    Args:
        relative: scale each channel's noise by its norm weight's magnitude |w| (Z = sigma * |w| * N(0, 1)), so
            sigma is the same multiplicative noise (1 + Z/w) on the following rows in any model; False (default):
            the paper's absolute Z ~ N(0, sigma^2).
    """

    relative: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        check_relative(type(self).__name__, self.relative)

    @abstractmethod
    def sigma_at(self, step: int, total_steps: int) -> float:
        """Sigma for optimizer step `step` (0-based) of a run of `total_steps`."""


def check_relative(owner: str, value) -> bool:
    """`value` if it is a bool, else a TypeError that names `owner.relative`."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: relative={value!r} is not a boolean; give true (noise scaled by each norm "
                        "weight's |w|) or false (the paper's absolute sigma).")
    return value


def check_sigma(owner: str, name: str, value: float) -> float:
    """`value` as a float, or a ValueError that names `owner.name` and the value."""
    try:
        sigma = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: {name}={value!r} is not a number; give a standard deviation >= 0.") from None
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"{owner}: {name}={value!r} is invalid; a noise standard deviation must be finite and >= 0.")
    return sigma


def _integer(value) -> int | None:
    """`value` as an int if it is an integer (numpy ints too, bools not), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_decay(owner: str, sigma_start: float, sigma_end: float, num_stages: int) -> tuple[float, float, int]:
    """Validated (sigma_start, sigma_end, num_stages) of a staged decay."""
    start = check_sigma(owner, "sigma_start", sigma_start)
    end = check_sigma(owner, "sigma_end", sigma_end)
    if end > start:
        raise ValueError(
            f"{owner}: sigma_end={sigma_end!r} is larger than sigma_start={sigma_start!r}; a decay must not grow. "
            "Swap them, or use Constant for a fixed sigma."
        )
    stages = _integer(num_stages)
    if stages is None or stages < 2:
        raise ValueError(
            f"{owner}: num_stages={num_stages!r} is invalid; it must be an integer >= 2 "
            "(stage 0 is noise-free, stages 1..K-1 carry the decay)."
        )
    return start, end, stages


def check_progress(owner: str, step: int, total_steps: int) -> None:
    """Reject a negative step or a non-positive run length, naming the value."""
    total = _integer(total_steps)
    if total is None or total < 1:
        raise ValueError(
            f"{owner}.sigma_at: total_steps={total_steps!r} is invalid; it must be a positive integer "
            "(set trainer max_steps, or a finite max_epochs)."
        )
    index = _integer(step)
    if index is None or index < 0:
        raise ValueError(f"{owner}.sigma_at: step={step!r} is invalid; it must be an integer >= 0.")


def stage_of(step: int, total_steps: int, num_stages: int) -> int:
    """The 0-based stage of `step`: `min(K - 1, floor(step * K / total_steps))`."""
    return min(num_stages - 1, (step * num_stages) // total_steps)


def staged_decay(owner: str, step: int, total_steps: int, num_stages: int, start: float, end: float,
                 curve: Callable[[float, float, float], float]) -> float:
    """Sigma of a K-stage decay: 0 in stage 0, `curve(start, end, t)` after it, exactly `end` in the last stage.

    `t = stage_progress(stage, K)` runs from 0 (stage 1: `curve` must give `start`) to 1; the last stage
    returns `end` itself so no rounding of `curve` leaks into it.
    """
    check_progress(owner, step, total_steps)
    stage = stage_of(step, total_steps, num_stages)
    if stage == 0:
        return 0.0
    t = stage_progress(stage, num_stages)
    return float(end) if t == 1.0 else curve(float(start), float(end), t)


def stage_progress(stage: int, num_stages: int) -> float:
    """Progress t in [0, 1] of noisy stage `stage` >= 1: `(stage - 1) / (K - 2)`, 0 when K = 2."""
    return 0.0 if num_stages == 2 else (stage - 1) / (num_stages - 2)


@dataclass(frozen=True)
class StagedDecay(NoiseSchedule):
    """A K-stage decay: sigma 0 in stage 0, then `curve` from sigma_start down to sigma_end (exactly, last stage).

    Args:
        sigma_start: sigma of stage 1 (the first noisy stage).
        sigma_end: sigma of the last stage; must not exceed sigma_start.
        num_stages: K, the number of equal stages (>= 2), stage 0 included.
    """

    sigma_start: float = 1e-2
    sigma_end: float = 1e-4
    num_stages: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_decay(type(self).__name__, self.sigma_start, self.sigma_end, self.num_stages)

    @staticmethod
    @abstractmethod
    def curve(start: float, end: float, t: float) -> float:
        """Sigma at progress t in [0, 1] through the noisy stages (t = 0 must give `start`)."""

    def sigma_at(self, step: int, total_steps: int) -> float:
        return staged_decay(type(self).__name__, step, total_steps, self.num_stages, self.sigma_start, self.sigma_end,
                            self.curve)
