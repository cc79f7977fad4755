"""`ResumableRun`: the QeRLModule hooks that make a resumed run continue exactly where the killed one stopped.

A checkpoint keeps only the trainable tensors, the RNG states (every rank's), how many prompt batches this epoch
consumed, the rollout seed, the non-finite-step streak, the windows of the running means (every rank's:
`reward/running_mean`, `train/accuracy_running`) and the last step's metrics; the first step after a resume
skips the consumed prompts and restores the RNG (`qerl.training.resume`).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from qerl.parallel import gather_objects, world
from qerl.training import distributed
from qerl.training.checkpoint_match import base_identity, check_resume, warn_other_base
from qerl.training.resume import capture_rng, resume_position, step_log_metrics


class ResumableRun:
    """Mixed into `QeRLModule` (before `LightningModule`); uses its `seed`, `_batches_drawn`, `_nan_streak`,
    `running`, `_pending_resume` and `_step_metrics`."""

    def on_train_epoch_start(self) -> None:
        if self._pending_resume is None:
            self._batches_drawn = 0

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        rng = capture_rng()
        checkpoint["qerl"] = {"rng": rng, "batches_drawn": self._batches_drawn, "seed": self.seed,
                              "epoch": self.current_epoch, "nan_streak": self._nan_streak, "base": base_identity(self)}
        # every rank runs this hook (rank 0 writes): each keeps its own RNG and running-mean window
        by_rank = gather_objects((rng, self.running.state()))
        checkpoint["qerl"]["running_by_rank"] = [running for _, running in by_rank]
        if len(by_rank) > 1:
            checkpoint["qerl"]["rng_by_rank"] = [state for state, _ in by_rank]
        if self._step_metrics is not None and self._trainer is not None:
            # a checkpoint saved at a step's end is written before Lightning hands that step's metrics to the
            # logger: keep them, so a run resumed from it logs them if a kill lost them (qerl.training.run_folder purges
            # the killed run's copy at `log_step`, so they show once)
            checkpoint["qerl"]["metrics"] = step_log_metrics(self.trainer, self._step_metrics)
            checkpoint["qerl"]["log_step"] = int(self.trainer.fit_loop.epoch_loop._batches_that_stepped)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None:  # a resume: the weights must fit before Lightning loads them
            check_resume(self, checkpoint, self.trainer.ckpt_path)
            warn_other_base(self, checkpoint.get("qerl", {}).get("base"), self.trainer.ckpt_path)
        self._pending_resume = distributed.own_rng(checkpoint.get("qerl", {}))
        self._nan_streak = int(self._pending_resume.get("nan_streak", 0))
        running = checkpoint.get("qerl", {}).get("running_by_rank")
        if running:  # this rank's window when the run has as many ranks, else rank 0's (older checkpoints: none)
            size, rank = world()
            self.running.load_state(running[rank] if len(running) == size else running[0])
        # the rollout seed of the run being resumed (it follows seed_everything, which may have been drawn at random)
        self.seed = int(checkpoint.get("qerl", {}).get("seed", self.seed))

    def _resume_data_position(self, dataloader_iter: Iterator) -> None:
        """First step after a resume: skip the prompts already used this epoch, then restore the RNG."""
        pending, self._pending_resume = self._pending_resume, None
        if pending is not None:
            loader = self.trainer.train_dataloader if self._trainer is not None else None
            self._batches_drawn = resume_position(pending, self.current_epoch, loader, dataloader_iter)
            if pending.get("metrics") and "log_step" in pending:
                for logger in self.loggers:
                    logger.log_metrics(pending["metrics"], step=int(pending["log_step"]))
