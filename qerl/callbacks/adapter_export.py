"""AdapterExport: save the peft LoRA adapter into the run's log directory every N steps and at the end."""
from __future__ import annotations

import os
import shutil
from typing import Any

import lightning as L

from qerl.lora.adapter_folder import save_adapter
from qerl.training.checkpoint_io import adapter_write_failure


def shares_save_dir(logger, log_dir: str | None) -> bool:
    """Whether `trainer.log_dir` is the logger's `save_dir` itself (W&B), not a version folder of its own.
    The same answer on every rank (it reads configuration only)."""
    save_dir = getattr(logger, "save_dir", None) if logger is not None else None
    return bool(save_dir and log_dir) and os.path.abspath(log_dir) == os.path.abspath(save_dir)


def run_dir(trainer: L.Trainer) -> str:
    """The run's log directory (the logger's version folder), or the trainer's root dir without a logger.

    A logger without version folders of its own (W&B: `trainer.log_dir` is its `save_dir`, shared by every run)
    gets the folder its checkpoints go to, `<save_dir>/<project>/<run id>`, on rank 0.
    """
    folder = trainer.log_dir or trainer.default_root_dir  # on every rank: under DDP this is a broadcast from rank 0
    logger = trainer.loggers[0] if trainer.loggers else None
    if trainer.is_global_zero and shares_save_dir(logger, folder):
        _ = logger.experiment  # W&B draws the run id when its run starts
        if logger.version is not None:
            return os.path.join(folder, str(logger.name), str(logger.version))
    return folder


def ordinary_permissions(folder: str) -> None:
    """Files as the umask allows (safetensors writes 0600, which other users and tools then cannot read)."""
    mask = os.umask(0)
    os.umask(mask)
    for name in os.listdir(folder):
        file = os.path.join(folder, name)
        if os.path.isfile(file):
            os.chmod(file, 0o666 & ~mask)


class AdapterExport(L.Callback):
    """Writes `<log_dir>/adapter/step-<N>` every `every_n_steps` steps (0: never) and `<log_dir>/adapter/final`.

    The folders are standard peft adapters (`adapter_config.json` + `adapter_model.safetensors`)
    that load onto the bf16 base with `PeftModel.from_pretrained`. Trained norms, if any, go next to them in
    `qerl_norms.safetensors` (`qerl.lora.adapter_folder`), which `qerl export` and `lora.init_from` read.
    """

    def __init__(self, every_n_steps: int = 0) -> None:
        self.every_n_steps = int(every_n_steps or 0)
        self.exported: list[str] = []
        self._last_step = -1

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> str | None:
        model = getattr(pl_module, "model", None)
        if model is None or not hasattr(model, "save_pretrained"):
            return None
        folder = run_dir(trainer)  # on every rank: under DDP `trainer.log_dir` is a broadcast from rank 0
        if not trainer.is_global_zero:
            return None
        path = os.path.join(folder, "adapter", name)
        existed = os.path.exists(path)
        try:
            save_adapter(model, path)
            ordinary_permissions(path)
        except Exception as exc:  # a full disk or read-only folder: one line, and no half-written new folder
            failure = adapter_write_failure(path, exc)
            if failure is None:
                raise
            if not existed:
                shutil.rmtree(path, ignore_errors=True)
            raise failure from exc
        self.exported.append(path)
        return path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self.export(trainer, pl_module, f"step-{step}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.export(trainer, pl_module, "final")
