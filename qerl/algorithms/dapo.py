"""DAPO: clip-higher, dynamic sampling, token-level loss and soft overlong reward shaping, no KL."""
from __future__ import annotations

import torch

from qerl.algorithms.advantages import group_advantages, varied_groups
from qerl.algorithms.base import Algorithm, check_option, check_policy_options
from qerl.registry import ALGORITHMS
from qerl.types import SamplingConfig


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: float) -> torch.Tensor:
    """DAPO's soft overlong punishment in [-1, 0] per completion (float32, shape of `lengths`).

    0 up to max_length - buffer tokens, then a linear ramp (max_length - buffer - L) / buffer
    reaching -1 at max_length, and -1 beyond. buffer = 0 punishes only L > max_length.
    """
    lengths = lengths.float()
    if buffer == 0:
        return torch.where(lengths > max_length, -1.0, 0.0)
    return ((max_length - buffer - lengths) / buffer).clamp(min=-1.0, max=0.0)


@ALGORITHMS.register()
class DAPO(Algorithm):
    """DAPO: clip-higher, dynamic sampling, token-level loss, overlong reward shaping, no KL.

    Args:
        eps_low: lower clip range, the ratio is clipped at 1 - eps_low.
        eps_high: upper clip range, 1 + eps_high (higher than eps_low: "clip-higher").
        overlong_buffer: L_cache, the last tokens before `sampling.max_new_tokens`
            in which the length penalty ramps from 0 to -1. None takes a fifth
            of max_new_tokens (DAPO's 4096 of 20480); 0 punishes only overruns.
        overlong_penalty_factor: weight of that penalty added to the reward; 0 disables it.
        dynamic_sampling: drop groups whose rewards are all equal (no signal)
            and let the module refill the batch from new prompts.
        max_resample_rounds: extra rollout rounds the module may run to refill
            dropped groups per step (bounded; then it trains on what it has).
        num_iterations: policy updates per rollout batch.
        eps: added to the std before dividing.
    """

    beta = 0.0  # ref_logprobs, when given, only feed the `kl` metric
    loss_aggregation = "token_mean"

    def __init__(
        self,
        eps_low: float = 0.2,
        eps_high: float = 0.28,
        overlong_buffer: int | None = None,
        overlong_penalty_factor: float = 1.0,
        dynamic_sampling: bool = True,
        max_resample_rounds: int = 3,
        num_iterations: int = 1,
        eps: float = 1e-4,
    ) -> None:
        name = type(self).__name__
        check_policy_options(name, eps_low=eps_low, eps_high=eps_high, num_iterations=num_iterations)
        check_option(
            name, "overlong_buffer", overlong_buffer,
            overlong_buffer is None
            or (isinstance(overlong_buffer, int) and not isinstance(overlong_buffer, bool) and overlong_buffer >= 0),
            "None or an int >= 0 (tokens)",
        )
        check_option(
            name, "overlong_penalty_factor", overlong_penalty_factor,
            isinstance(overlong_penalty_factor, (int, float)) and overlong_penalty_factor >= 0.0, ">= 0",
        )
        check_option(
            name, "max_resample_rounds", max_resample_rounds,
            isinstance(max_resample_rounds, int) and not isinstance(max_resample_rounds, bool)
            and max_resample_rounds >= 0,
            "an int >= 0",
        )
        check_option(name, "eps", eps, isinstance(eps, (int, float)) and eps >= 0.0, ">= 0")
        self.eps_low = float(eps_low)
        self.eps_high = float(eps_high)
        self.overlong_buffer = overlong_buffer
        self.overlong_penalty_factor = float(overlong_penalty_factor)
        self.dynamic_sampling = bool(dynamic_sampling)
        self.max_resample_rounds = max_resample_rounds if dynamic_sampling else 0
        self.num_iterations = num_iterations
        self.eps = float(eps)

    def buffer_for(self, max_new_tokens: int) -> int:
        """L_cache for this max length: `overlong_buffer`, or max_new_tokens // 5 when unset."""
        buffer = max_new_tokens // 5 if self.overlong_buffer is None else self.overlong_buffer
        if self.overlong_penalty_factor > 0 and buffer >= max_new_tokens:
            raise ValueError(
                f"DAPO: `overlong_buffer`={buffer} must be below `sampling.max_new_tokens`="
                f"{max_new_tokens}, or every completion is punished for its length. Lower "
                "`algorithm.init_args.overlong_buffer` (DAPO used 4096 of 20480), or set "
                "`overlong_penalty_factor: 0` to switch the shaping off."
            )
        return buffer

    def configure(self, sampling: SamplingConfig) -> None:
        """Check the group size and that the overlong buffer fits inside `sampling.max_new_tokens`."""
        super().configure(sampling)
        self.buffer_for(sampling.max_new_tokens)

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, scale=True, eps=self.eps)

    def shape_rewards(self, rewards: torch.Tensor, lengths: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """rewards + overlong_penalty_factor * soft overlong penalty of each completion's length."""
        if rewards.shape != lengths.shape:
            raise ValueError(f"rewards {tuple(rewards.shape)} and lengths {tuple(lengths.shape)} must match.")
        penalty = overlong_penalty(lengths.to(rewards.device), max_new_tokens, self.buffer_for(max_new_tokens))
        return rewards.float() + self.overlong_penalty_factor * penalty

    def keep_groups(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """Groups whose rewards are not all equal (all groups when `dynamic_sampling` is off)."""
        varied = varied_groups(rewards, group_size)
        return varied if self.dynamic_sampling else torch.ones_like(varied)
