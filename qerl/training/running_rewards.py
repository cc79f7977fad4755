"""Running reward and accuracy over the last steps, synchronised across processes (torchmetrics)."""
from __future__ import annotations

import torch
from torch import nn


class RunningRewards(nn.Module):
    """Means over the last `window` steps of the total reward and the accuracy of all completions.

    `update` takes one step's (R,) rewards and (R,) correctness; `compute` returns
    `{"reward/running_mean": ..., "train/accuracy_running": ...}`, reduced over every process.
    """

    def __init__(self, window: int = 10) -> None:
        super().__init__()
        from torchmetrics.aggregation import RunningMean

        self.reward = RunningMean(window=window)
        self.accuracy = RunningMean(window=window)

    def update(self, rewards: torch.Tensor, correct: torch.Tensor) -> None:
        self.reward.update(rewards.detach().float())
        self.accuracy.update(correct.detach().float())

    def compute(self) -> dict[str, float]:
        return {"reward/running_mean": float(self.reward.compute()),
                "train/accuracy_running": float(self.accuracy.compute())}
