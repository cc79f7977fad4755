"""The `VLLM` rollout backend: a colocated vLLM engine that holds the policy's base weights.

Importing this package does not import vllm; `VLLM.setup` does. The files, one part each:
`backend.py` (the `VLLM` class), `engine.py` (building `vllm.LLM`, base-weight export), `checks.py` (settings and
adapter checks), `worker.py` (functions run inside the engine worker: LoRA, norms, AQN), `host_copy.py` (the
adapter snapshot), `norms.py` (float32 norms), `noise.py` (AQN in the engine), `sleep.py` (sleep mode),
`memory.py` (its side of the memory plan), `ranks.py` (an engine per rank or tensor-parallel group),
`outputs.py` (vLLM outputs -> `Rollout`), `scheduling.py` (vLLM's asynchronous scheduling).
"""
from qerl.rollout.vllm.backend import VLLM

__all__ = ["VLLM"]
