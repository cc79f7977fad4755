"""Fault injection for tests/test_fault_injection.py: a callback that `kill -9`s its own process at a chosen point.

Named in a recipe (`class_path: fault_hooks.KillAt`) of a `qerl fit` subprocess whose PYTHONPATH holds tests/.
"""
from __future__ import annotations

import io
import os
import signal

import lightning as L
import torch


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt(L.Callback):
    """SIGKILL after optimizer step `step` or, with `during_save=k`, half-way through the k-th checkpoint file
    written at that step (1: `epoch=..-step=N.ckpt`, 2: `last.ckpt`)."""

    def __init__(self, step: int, during_save: int = 0) -> None:
        self.step, self.during_save, self.saves = step, during_save, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.during_save and trainer.global_step == self.step:
            die()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if not self.during_save or trainer.global_step != self.step:
            return
        self.saves += 1
        if self.saves == self.during_save:
            torch.save = half_then_die(torch.save)


def half_then_die(real_save):
    """A `torch.save` that writes the first half of the file's bytes, syncs them to disk, and is killed."""

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        if hasattr(f, "write"):
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        else:
            with open(f, "wb") as handle:
                handle.write(data[: len(data) // 2])
        die()

    return save
