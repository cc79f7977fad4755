"""RolloutSyncCallback: push the updated trainable weights into a rollout engine that keeps its own copy."""
from __future__ import annotations

from typing import Any

import lightning as L


class RolloutSyncCallback(L.Callback):
    """After every optimizer step (and once at the start) calls `rollout.sync_weights(policy)`.

    The module must expose `rollout` (a RolloutBackend) and `model` (the policy). For a backend that
    generates with the policy itself (`HF`) the call is a no-op; an engine such as vLLM receives the
    new LoRA weights (and norms, when trained) before its next generation.
    """

    def __init__(self) -> None:
        self.syncs = 0
        self._last_step: int | None = None

    def _sync(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rollout, policy = getattr(pl_module, "rollout", None), getattr(pl_module, "model", None)
        if rollout is None or policy is None:
            return
        rollout.sync_weights(policy)
        self.syncs += 1
        self._last_step = trainer.global_step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step != self._last_step:  # an optimizer step happened in this batch
            self._sync(trainer, pl_module)
