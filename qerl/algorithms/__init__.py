"""RL algorithms: group-relative advantages and clipped policy losses (pure tensor math)."""
from qerl.algorithms.base import Algorithm
from qerl.algorithms.dapo import DAPO
from qerl.algorithms.drgrpo import DrGRPO
from qerl.algorithms.grpo import GRPO

__all__ = ["DAPO", "GRPO", "Algorithm", "DrGRPO"]
