"""Dr.GRPO ("GRPO done right"): no std division and a constant loss normaliser, removing GRPO's length bias."""
from __future__ import annotations

import torch

from qerl.algorithms.advantages import group_advantages
from qerl.algorithms.base import Algorithm, check_option, check_policy_options
from qerl.algorithms.surrogate import clipped_policy_loss, constant_normalizer
from qerl.registry import ALGORITHMS
from qerl.types import LossOutput, SamplingConfig


@ALGORITHMS.register()
class DrGRPO(Algorithm):
    """Dr.GRPO: advantages r - mean(group) (no std), token sum over completions x max_completion_length.

    Args:
        eps_low: lower clip range, the ratio is clipped at 1 - eps_low.
        eps_high: upper clip range, the ratio is clipped at 1 + eps_high.
        beta: weight of the k3 KL to the reference; 0 skips the reference pass.
        max_completion_length: the constant normaliser; None takes
            `sampling.max_new_tokens` when the module calls `configure`.
        num_iterations: policy updates per rollout batch.
    """

    def __init__(
        self,
        eps_low: float = 0.2,
        eps_high: float = 0.2,
        beta: float = 0.0,
        max_completion_length: int | None = None,
        num_iterations: int = 1,
    ) -> None:
        name = type(self).__name__
        check_policy_options(name, eps_low=eps_low, eps_high=eps_high, num_iterations=num_iterations, beta=beta)
        check_option(
            name, "max_completion_length", max_completion_length,
            max_completion_length is None or (isinstance(max_completion_length, int) and max_completion_length >= 1),
            "None or an int >= 1",
        )
        self.eps_low = float(eps_low)
        self.eps_high = float(eps_high)
        self.beta = float(beta)
        self.max_completion_length = max_completion_length
        self.num_iterations = num_iterations

    def configure(self, sampling: SamplingConfig) -> None:
        """Check the group size; the normaliser defaults to, and must cover, `sampling.max_new_tokens`."""
        super().configure(sampling)
        if self.max_completion_length is None:
            self.max_completion_length = sampling.max_new_tokens
        if self.max_completion_length < sampling.max_new_tokens:
            raise ValueError(
                f"DrGRPO: `max_completion_length`={self.max_completion_length} is below `sampling.max_new_tokens`="
                f"{sampling.max_new_tokens}; the constant normaliser must cover the longest completion. Raise "
                "`algorithm.init_args.max_completion_length` or leave it unset."
            )

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, scale=False)

    def loss(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        ref_logprobs: torch.Tensor | None = None,
        *,
        num_sequences: int | None = None,
        num_tokens: float | None = None,
    ) -> LossOutput:
        return clipped_policy_loss(
            logprobs, old_logprobs, advantages, mask,
            eps_low=self.eps_low, eps_high=self.eps_high, aggregate=constant_normalizer,
            beta=self.beta, ref_logprobs=ref_logprobs, num_sequences=num_sequences, num_tokens=num_tokens,
            max_completion_length=self.max_completion_length,
        )
