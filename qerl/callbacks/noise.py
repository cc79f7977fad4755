"""NoiseCallback: the AQN sigma for each training step, from a NoiseSchedule, saved with checkpoints."""
from __future__ import annotations

from typing import Any

import lightning as L
import torch

from qerl.noise.base import NoiseDraw, NoiseSchedule

_SEED_MIX = 1_000_003  # spreads per-step seeds of different base seeds apart


class NoiseCallback(L.Callback):
    """Sets the AQN sigma of every training step from a schedule and logs it as `noise/sigma`.

    At each train batch start it computes `sigma = schedule.sigma_at(global_step, total_steps)`
    (total_steps = `trainer.max_steps`, or `trainer.estimated_stepping_batches` when max_steps
    is unset) and publishes one `NoiseDraw` on the LightningModule, `pl_module.noise_draw`:
    its `sigma`; its `seed`, a pure function of `seed` and the step, so every consumer of one
    step (the rollout backend's `noise(sigma, seed)`, and the training forward when enabled)
    draws the same Z, and a resumed run draws what the uninterrupted run would have; and
    `in_training` (`apply_in_training`): whether the module also wraps its training forward
    (and backward) in `noisy_norms(policy, sigma, seed)`; and `relative`, the schedule's
    (noise scaled by each norm weight's |w|).

    The callback itself never touches weights: the module applies the noise where it
    generates, and logs what the generating engine really applied next to `noise/sigma`:
    `noise/realized_sigma`, `noise/moved_fraction` and `noise/row_sigma` (the spread of Z/w the
    rows get), measured on the engine's weights after its dtype (see `qerl.noise.precision`).
    Its state (base seed, planned total_steps, last step and sigma) is saved in checkpoints; a resumed
    run keeps the planned total_steps, so the schedule continues where it stopped (steps past that
    total stay in the last stage).

    Args:
        schedule: the sigma schedule, e.g. `Exponential()`.
        apply_in_training: also apply the noise in the training forward (default: rollouts only).
        seed: base seed of the per-step noise; None takes `torch.initial_seed()` at fit start
            (set by `seed_everything`).
    """

    def __init__(self, schedule: NoiseSchedule, apply_in_training: bool = False, seed: int | None = None) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(
                f"NoiseCallback: schedule={schedule!r} is not a NoiseSchedule; give one of "
                "qerl.noise's schedules, e.g. Exponential() (see `qerl list noise_schedulers`)."
            )
        self.schedule = schedule
        self.apply_in_training = bool(apply_in_training)
        self.seed = None if seed is None else int(seed)
        self.total_steps: int | None = None
        self.last_step: int | None = None
        self.last_sigma: float | None = None

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.seed is None:
            self.seed = int(torch.initial_seed()) % (2**31)
        if self.total_steps is None:  # not restored from a checkpoint
            self.total_steps = self._planned_steps(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.total_steps is None or self.seed is None:  # used outside fit(): plan now
            self.on_fit_start(trainer, pl_module)
        step = int(trainer.global_step)
        sigma = float(self.schedule.sigma_at(step, self.total_steps))
        pl_module.noise_draw = NoiseDraw(sigma, self.seed_for(step), self.apply_in_training, self.schedule.relative)
        self.last_step, self.last_sigma = step, sigma
        pl_module.log("noise/sigma", sigma, on_step=True, on_epoch=False, batch_size=1)

    def seed_for(self, step: int) -> int:
        """The noise seed of optimizer step `step`: `(seed * 1_000_003 + step) mod 2^63`."""
        return (int(self.seed or 0) * _SEED_MIX + int(step)) % (2**63)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "total_steps": self.total_steps,
            "last_step": self.last_step,
            "last_sigma": self.last_sigma,
            "schedule": repr(self.schedule),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = state_dict.get("seed", self.seed)
        self.total_steps = state_dict.get("total_steps", self.total_steps)
        self.last_step = state_dict.get("last_step")
        self.last_sigma = state_dict.get("last_sigma")

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _planned_steps(trainer: L.Trainer) -> int:
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return int(trainer.max_steps)
        estimated = trainer.estimated_stepping_batches
        if estimated is None or estimated == float("inf") or estimated < 1:
            raise ValueError(
                f"NoiseCallback: cannot plan the noise schedule - the run length is unknown "
                f"(max_steps={trainer.max_steps}, estimated_stepping_batches={estimated}). "
                "Set trainer.max_steps or a finite trainer.max_epochs."
            )
        return int(estimated)
