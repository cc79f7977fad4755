"""The `VLLM` backend's sleep mode: the engine hands its GPU memory back while the policy trains.

vLLM's level-1 sleep copies the engine's weights to pinned CPU memory and drops its KV cache; waking maps both
back with cuMemCreate (beside torch's caching allocator) and copies the weights in.
"""
from __future__ import annotations

import torch

from qerl.rollout.vllm import memory


class EngineSleep:
    """Sleep and wake for a backend holding `llm` (a `vllm.LLM` built with `enable_sleep_mode`), `_asleep`,
    `enable_sleep_mode` (True, False or "auto"), `resolved_sleep_mode`, `resolved_utilization` and `_ready()`."""

    @property
    def sleep_mode(self) -> bool:
        """Whether the engine sleeps while the policy trains: `enable_sleep_mode`, with "auto" as the start-up
        memory plan decided it (`resolved_sleep_mode`: off when the run fits with the engine awake through
        training) and on when no plan has decided (an engine built outside `QeRLModule`)."""
        if self.enable_sleep_mode == "auto":
            return True if self.resolved_sleep_mode is None else bool(self.resolved_sleep_mode)
        return bool(self.enable_sleep_mode)

    def prepare(self) -> None:
        """Wake the engine (sleep mode) and apply the pending weight sync now instead of at the next `generate`
        (`benchmarks/step.py` times the wake this way)."""
        self._ready()

    def release_memory(self) -> None:
        """In sleep mode (CUDA), offload the engine's weights and drop its KV cache until the next generation."""
        if self.sleep_mode and self.llm is not None and not self._asleep and torch.cuda.is_available():
            self.llm.sleep(level=1)
            self._asleep = True

    def _wake(self) -> None:
        # vLLM maps its weights and KV cache back with cuMemCreate, past torch's caching allocator: blocks the
        # update freed but torch still caches would leave too little room (32B 16 x 2,048 on a 79 GiB card)
        torch.cuda.empty_cache()
        try:
            self.llm.wake_up()
        except RuntimeError as exc:  # vLLM's cumem pool: "CUDA Error: out of memory"
            if "out of memory" not in str(exc).lower():
                raise
            message = memory.wake_message(exc, self.resolved_utilization or 0.0,
                                               torch.cuda.get_device_properties(0).total_memory,
                                               torch.cuda.mem_get_info()[0], torch.cuda.memory_allocated())
            raise torch.OutOfMemoryError(message) from exc
        self._asleep = False
