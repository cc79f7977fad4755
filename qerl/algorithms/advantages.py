"""Group-relative advantages: each completion is scored against the other completions of its prompt."""
from __future__ import annotations

import torch


def check_group_size(group_size: int, num_rows: int | None = None) -> None:
    """Raise a user-facing error unless `group_size` >= 2 (and divides `num_rows` when given)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int (the `sampling.n` completions per prompt), got {group_size!r}.")
    if group_size < 2:
        raise ValueError(
            f"group_size={group_size}: group-relative advantages compare the completions of one prompt with "
            "each other, so a group of one gives every completion an advantage of 0 and nothing is learned. "
            "Set `sampling.n` (completions per prompt) to 2 or more; 8 is typical."
        )
    if num_rows is not None and num_rows % group_size != 0:
        raise ValueError(
            f"{num_rows} rewards cannot be split into groups of group_size={group_size} (`sampling.n`): "
            "the rollout must return exactly `sampling.n` completions per prompt, groups contiguous."
        )


def group_rewards(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """View flat (R,) rewards as (R / group_size, group_size) after checking the shape."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (R,), one reward per completion; got shape {tuple(rewards.shape)}.")
    check_group_size(group_size, rewards.numel())
    return rewards.reshape(-1, group_size)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """A_i = (r_i - mean(group)) / (std(group) + eps), or r_i - mean(group) when `scale` is False.

    Rows of one group are contiguous in `rewards` (shape (R,)). The std is the
    unbiased sample std (Bessel's correction), as in DeepSeekMath's GRPO code and
    TRL. A group whose rewards are all equal gets exactly 0. Computed in float32;
    returns shape (R,).
    """
    grouped = group_rewards(rewards, group_size).float()
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        std = grouped.std(dim=1, keepdim=True)
        # a flat group carries no signal: exactly 0, even with eps = 0
        centred = torch.where(std > 0, centred / (std + eps), torch.zeros((), device=centred.device))
    return centred.reshape(-1)


def varied_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Bool (R / group_size,) mask: True where a group's rewards are not all equal."""
    grouped = group_rewards(rewards, group_size)
    return grouped.amax(dim=1) > grouped.amin(dim=1)
