"""Running reward and accuracy over the last steps, synchronised across processes (torchmetrics)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class RunningRewards(nn.Module):
    """Means over the last `window` steps of the total reward and the accuracy of all completions.

    `update` takes one step's (R,) rewards and (R,) correctness; `compute` returns
    `{"reward/running_mean": ..., "train/accuracy_running": ...}`, reduced over every process.
    `state` / `load_state` carry this process's window through a checkpoint, so a resumed run continues the
    running means instead of restarting them.
    """

    def __init__(self, window: int = 10) -> None:
        super().__init__()
        from torchmetrics.aggregation import RunningMean

        self.window = window
        self.reward = RunningMean(window=window)
        self.accuracy = RunningMean(window=window)

    def update(self, rewards: torch.Tensor, correct: torch.Tensor) -> None:
        self.reward.update(rewards.detach().float())
        self.accuracy.update(correct.detach().float())

    def compute(self) -> dict[str, float]:
        return {"reward/running_mean": float(self.reward.compute()),
                "train/accuracy_running": float(self.accuracy.compute())}

    def state(self) -> dict[str, Any]:
        """This process's window (tensors and ints only: checkpoints load with `weights_only=True`)."""
        # `_num_vals_seen` is where torchmetrics' Running wrapper writes the next step (the window is a ring)
        return {"window": self.window,
                **{name: {"states": {k: v.detach().cpu().clone() for k, v in metric.metric_state.items()},
                          "seen": int(metric._num_vals_seen)}
                   for name, metric in (("reward", self.reward), ("accuracy", self.accuracy))}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Put back what `state` returned; a window of another length is left as it is (the means restart)."""
        if int(state.get("window", -1)) != self.window:
            return
        for name, metric in (("reward", self.reward), ("accuracy", self.accuracy)):
            saved = state[name]
            for key, value in saved["states"].items():
                current = getattr(metric, key)
                setattr(metric, key, value.to(device=current.device, dtype=current.dtype).clone())
            metric._num_vals_seen = int(saved["seen"])
            metric._computed = None
