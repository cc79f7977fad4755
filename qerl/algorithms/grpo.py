"""GRPO: group-normalised advantages and a clipped surrogate, with an optional k3 KL to the reference."""
from __future__ import annotations

from typing import Literal

import torch

from qerl.algorithms.advantages import group_advantages
from qerl.algorithms.base import Algorithm, check_option, check_policy_options
from qerl.algorithms.surrogate import AGGREGATIONS
from qerl.registry import ALGORITHMS
from qerl.types import SamplingConfig

LossAggregation = Literal["sequence_mean", "token_mean", "constant"]


@ALGORITHMS.register()
class GRPO(Algorithm):
    """Group Relative Policy Optimization: group-normalised advantages, clipped surrogate, optional k3 KL.

    Args:
        eps_low: lower clip range, the ratio is clipped at 1 - eps_low.
        eps_high: upper clip range, the ratio is clipped at 1 + eps_high.
        beta: weight of the k3 KL to the reference (the base with adapters
            disabled); 0 skips the reference pass.
        scale_rewards: divide advantages by the group's reward std (False is
            Dr.GRPO's choice).
        loss_aggregation: "sequence_mean" (mean per completion, then over
            completions: original GRPO), "token_mean" (over all tokens of the
            batch: DAPO) or "constant" (token sum / (completions x
            max_completion_length): Dr.GRPO).
        max_completion_length: the "constant" normaliser; None takes
            `sampling.max_new_tokens` when the module calls `configure`.
        num_iterations: policy updates per rollout batch (> 1 needs stored
            old log-probs).
        eps: added to the std before dividing.
    """

    def __init__(
        self,
        eps_low: float = 0.2,
        eps_high: float = 0.2,
        beta: float = 0.0,
        scale_rewards: bool = True,
        loss_aggregation: LossAggregation = "sequence_mean",
        max_completion_length: int | None = None,
        num_iterations: int = 1,
        eps: float = 1e-4,
    ) -> None:
        name = type(self).__name__
        check_policy_options(name, eps_low=eps_low, eps_high=eps_high, num_iterations=num_iterations, beta=beta)
        check_option(
            name, "loss_aggregation", loss_aggregation, loss_aggregation in AGGREGATIONS,
            f"one of {', '.join(repr(k) for k in AGGREGATIONS)}",
        )
        check_option(
            name, "max_completion_length", max_completion_length,
            max_completion_length is None or (isinstance(max_completion_length, int) and max_completion_length >= 1),
            "None or an int >= 1",
        )
        check_option(name, "eps", eps, isinstance(eps, (int, float)) and eps >= 0.0, ">= 0")
        self.eps_low = float(eps_low)
        self.eps_high = float(eps_high)
        self.beta = float(beta)
        self.scale_rewards = bool(scale_rewards)
        self.loss_aggregation = loss_aggregation
        self.max_completion_length = max_completion_length
        self.num_iterations = num_iterations
        self.eps = float(eps)

    def configure(self, sampling: SamplingConfig) -> None:
        """Check the group size; the constant normaliser defaults to `sampling.max_new_tokens`."""
        super().configure(sampling)
        if self.max_completion_length is None:
            self.max_completion_length = sampling.max_new_tokens
        elif self.loss_aggregation == "constant" and self.max_completion_length < sampling.max_new_tokens:
            raise ValueError(
                f"{type(self).__name__}: `max_completion_length`={self.max_completion_length} is below "
                f"`sampling.max_new_tokens`={sampling.max_new_tokens}; the constant normaliser must cover the "
                "longest completion. Raise `algorithm.init_args.max_completion_length` or leave it unset."
            )

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, scale=self.scale_rewards, eps=self.eps)
