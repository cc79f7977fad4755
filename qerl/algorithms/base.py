"""The RL-algorithm extension point: pure tensor math, no models, rollouts or I/O."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from qerl.algorithms.advantages import check_group_size
from qerl.algorithms.surrogate import AGGREGATIONS, clipped_policy_loss
from qerl.types import LossOutput, SamplingConfig


class Algorithm(ABC):
    """Turns rewards into advantages and log-probs into a policy loss.

    The loss is the clipped surrogate every built-in algorithm shares; an algorithm sets its clip range,
    KL weight and aggregation (`AGGREGATIONS`), and overrides `loss` only for a different objective.
    """

    #: policy updates per rollout batch (old log-probs are stored when > 1)
    num_iterations: int = 1
    #: KL coefficient to the reference (adapters disabled); 0 means no reference pass
    beta: float = 0.0
    #: extra rollout rounds the module may run to refill groups dropped by `keep_groups` (0: no refill)
    max_resample_rounds: int = 0
    #: clip range of the importance ratio: [1 - eps_low, 1 + eps_high]
    eps_low: float = 0.2
    eps_high: float = 0.2
    #: how (R, T) token losses become the scalar: "sequence_mean", "token_mean" or "constant"
    loss_aggregation: str = "sequence_mean"
    #: the "constant" aggregation's normaliser (completions x this many tokens)
    max_completion_length: int | None = None

    def configure(self, sampling: SamplingConfig) -> None:
        """Check at start-up that this algorithm fits the sampling settings (and fill what depends on them).

        The module calls this once before training; a mismatch raises a ValueError naming the recipe keys.
        """
        check_group_size(sampling.n)

    @abstractmethod
    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """Per-completion advantages from rewards of shape (R,), groups contiguous."""

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
        """Policy loss for (R, T) token log-probs, (R,) advantages and an (R, T) mask.

        `old_logprobs` are the log-probs of the policy that produced the rollout
        (with `num_iterations == 1`, pass `logprobs.detach()`). With gradient
        accumulation over micro-batches, pass the whole optimizer-step batch's
        `num_sequences` (completions) and `num_tokens` (mask sum): each
        micro-batch loss is then its share, and the micro-batch losses SUM
        (do not average them) to the full-batch loss whatever the aggregation.
        Left None, this call's rows are the whole batch.
        """
        return clipped_policy_loss(
            logprobs, old_logprobs, advantages, mask,
            eps_low=self.eps_low, eps_high=self.eps_high, aggregate=AGGREGATIONS[self.loss_aggregation],
            beta=self.beta, ref_logprobs=ref_logprobs, num_sequences=num_sequences, num_tokens=num_tokens,
            max_completion_length=self.max_completion_length,
        )

    def shape_rewards(self, rewards: torch.Tensor, lengths: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Adjust rewards before advantages (DAPO's overlong shaping); identity by default.

        `lengths` are generated tokens per completion, shape (R,).
        """
        return rewards

    def keep_groups(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """Bool mask over groups to train on (DAPO's dynamic sampling); all by default.

        Give it the task rewards before `shape_rewards`, so a group that is all
        wrong (or all right) is dropped even when its lengths differ.
        """
        return torch.ones(rewards.numel() // group_size, dtype=torch.bool, device=rewards.device)


def check_option(owner: str, key: str, value: object, ok: bool, expected: str) -> None:
    """Raise a ValueError naming the recipe key when an algorithm option is out of range."""
    if not ok:
        raise ValueError(
            f"{owner}: `{key}` must be {expected}, got {value!r}. Fix `algorithm.init_args.{key}` in the recipe."
        )


def check_policy_options(
    owner: str, *, eps_low: float, eps_high: float, num_iterations: int, beta: float = 0.0
) -> None:
    """Range checks shared by the clipped-surrogate algorithms."""
    check_option(owner, "eps_low", eps_low, isinstance(eps_low, (int, float)) and 0.0 <= eps_low < 1.0, "in [0, 1)")
    check_option(owner, "eps_high", eps_high, isinstance(eps_high, (int, float)) and eps_high >= 0.0, ">= 0")
    check_option(owner, "beta", beta, isinstance(beta, (int, float)) and beta >= 0.0, ">= 0 (0 disables the KL term)")
    check_option(
        owner, "num_iterations", num_iterations,
        isinstance(num_iterations, int) and not isinstance(num_iterations, bool) and num_iterations >= 1,
        "an int >= 1 (policy updates per rollout batch)",
    )
