"""StepProgressBar: Lightning's rich bar counting optimizer steps of a step-based run (`max_steps`, no epochs).

Lightning's bar counts batches of the current epoch and titles it `Epoch 0/-2` when `max_epochs` is unset;
an RL run is planned in steps, and a resumed one starts part-way. This bar reads `Step` and shows
`global_step / max_steps` across epochs and resumes.
"""
from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


def step_based(trainer: L.Trainer) -> bool:
    return trainer.max_epochs in (None, -1) and trainer.max_steps is not None and trainer.max_steps > 0


class StepProgressBar(RichProgressBar):
    """RichProgressBar whose training bar is `Step <done>/<max_steps>` for a step-based run."""

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if step_based(self.trainer) else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if not step_based(self.trainer):
            return super()._get_train_description(current_epoch)
        return f"{'Step':{len(self.validation_description)}}"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if step_based(trainer) and self.train_progress_bar_id is not None:
            self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not step_based(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()


def use_step_progress_bar(trainer: L.Trainer) -> None:
    """Swap Lightning's default bar for `StepProgressBar` (a bar the recipe chose is kept)."""
    bar = trainer.progress_bar_callback
    if type(bar) is RichProgressBar:  # (TQDM, used without `rich`, titles its bar `Epoch N`: left as it is)
        trainer.callbacks[trainer.callbacks.index(bar)] = StepProgressBar()
