"""The RL-algorithm extension point: pure tensor math, no models, rollouts or I/O."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from qerl.types import LossOutput


class Algorithm(ABC):
    """Turns rewards into advantages and log-probs into a policy loss."""

    #: policy updates per rollout batch (old log-probs are stored when > 1)
    num_iterations: int = 1
    #: KL coefficient to the reference (adapters disabled); 0 means no reference pass
    beta: float = 0.0

    @abstractmethod
    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """Per-completion advantages from rewards of shape (R,), groups contiguous."""

    @abstractmethod
    def loss(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        ref_logprobs: torch.Tensor | None = None,
    ) -> LossOutput:
        """Policy loss for (R, T) token log-probs, (R,) advantages and an (R, T) mask."""

    def shape_rewards(self, rewards: torch.Tensor, lengths: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Adjust rewards before advantages (DAPO's overlong shaping); identity by default."""
        return rewards

    def keep_groups(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """Bool mask over groups to train on (DAPO's dynamic sampling); all by default."""
        return torch.ones(rewards.numel() // group_size, dtype=torch.bool, device=rewards.device)
