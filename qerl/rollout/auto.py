"""`Auto`: the rollout engine chosen at start-up - `VLLM` on a CUDA device with vllm importable, else `HF`."""
from __future__ import annotations

import importlib.util
import sys
from typing import Any

import torch

from qerl.registry import ROLLOUT_BACKENDS
from qerl.rollout.base import RolloutBackend
from qerl.rollout.hf import HF
from qerl.rollout.vllm import VLLM


def choose_engine() -> tuple[str, str]:
    """("VLLM" or "HF", why): vLLM where it can serve the policy's FP4 base, qerl's fast engine elsewhere."""
    if not torch.cuda.is_available():
        return "HF", "no CUDA device: qerl's engine (HF backend) generates on the CPU"
    if importlib.util.find_spec("vllm") is None:
        return "HF", "vllm is not installed: the fast engine generates (pip install 'qerl[vllm]' for vLLM)"
    return "VLLM", "CUDA device and vllm installed: vLLM generates (its FP4 kernels serve the 4-bit base)"


@ROLLOUT_BACKENDS.register()
class Auto(RolloutBackend):
    """Picks the engine when the run starts: `VLLM` on CUDA with vllm installed, else `HF` (the fast engine).

    Building `Auto(...)` returns the chosen backend itself (a `VLLM` or an `HF`), built from `vllm` or `hf`
    settings, and prints which one generates and why.

    Args:
        vllm: `VLLM` settings used when vLLM is chosen (e.g. gpu_memory_utilization, max_model_len).
        hf: `HF` settings used otherwise (e.g. max_batch_rows).
        engine: force "VLLM" or "HF" (None: choose as above).
    """

    def __new__(cls, vllm: dict[str, Any] | None = None, hf: dict[str, Any] | None = None,
                engine: str | None = None) -> RolloutBackend:  # type: ignore[misc]
        if engine not in (None, "VLLM", "HF"):
            raise ValueError(f'Auto: `rollout.init_args.engine`={engine!r} must be "VLLM", "HF" or null.')
        name, why = (engine, "the recipe's rollout.init_args.engine") if engine else choose_engine()
        backend = VLLM(**(vllm or {})) if name == "VLLM" else HF(**(hf or {}))
        print(f"qerl: rollouts by {name} ({why})", file=sys.stderr, flush=True)
        return backend

    def __init__(self, vllm: dict[str, Any] | None = None, hf: dict[str, Any] | None = None,
                 engine: str | None = None) -> None:  # never runs: __new__ returns another class's instance
        super().__init__()

    def generate(self, prompt_ids, sampling):  # pragma: no cover - an Auto instance never exists
        raise NotImplementedError
