"""Dr.GRPO ("GRPO done right"): no std division and a constant loss normaliser, removing GRPO's length bias."""
from __future__ import annotations

from qerl.algorithms.grpo import GRPO
from qerl.registry import ALGORITHMS


@ALGORITHMS.register()
class DrGRPO(GRPO):
    """Dr.GRPO: advantages r - mean(group) (no std), token sum over completions x max_completion_length.

    GRPO with `scale_rewards: false` and `loss_aggregation: constant`, under its own name.

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
        super().__init__(eps_low=eps_low, eps_high=eps_high, beta=beta, scale_rewards=False,
                         loss_aggregation="constant", max_completion_length=max_completion_length,
                         num_iterations=num_iterations)
