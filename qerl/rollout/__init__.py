"""Rollout backends (ROLLOUT_BACKENDS): generate completions for the current policy.

Importing this package registers the built-in backends (`HF`; `VLLM` is imported lazily by its own module).
"""
from qerl.rollout.base import RolloutBackend
from qerl.rollout.hf import HF
from qerl.rollout.vllm import VLLM  # vllm itself is imported only when the engine is built

__all__ = ["HF", "VLLM", "RolloutBackend"]
