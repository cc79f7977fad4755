"""Rollout backends (ROLLOUT_BACKENDS): generate completions for the current policy.

Importing this package registers the built-in backends (`HF`, `VLLM` - vllm itself is imported only when its engine is built - and `Auto`, which picks one of them).
"""
from qerl.rollout.auto import Auto
from qerl.rollout.base import RolloutBackend
from qerl.rollout.hf import HF
from qerl.rollout.vllm import VLLM  # vllm itself is imported only when the engine is built

__all__ = ["HF", "VLLM", "Auto", "RolloutBackend"]
