"""The `VLLM` backend's AQN: the same channel-wise noise in the engine's RMSNorms as in the policy's, restored
bit-exactly afterwards (the engine's KV prefix cache is reset both ways: cached KV was computed with other norms)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from qerl.noise.base import check_sigma
from qerl.noise.inject import noisy_norms
from qerl.rollout.vllm import worker
from qerl.rollout.vllm.engine import engine_name
from qerl.rollout.vllm.norms import engine_realized


class EngineNoise:
    """`noise` for a backend holding `llm`, `policy`, `_noise_sigma` and `_ready()`."""

    @contextlib.contextmanager
    def noise(self, sigma: float, seed: int | None = None, relative: bool = False) -> Iterator[None]:
        """AQN on the engine's RMSNorms (found by vLLM's class) and the policy's: the same Z, restored exactly.

        `relative` noise is scaled by the policy's norm weights (`noisy_norms`), which the engine holds too; the
        engine adds that Z as it is. `noise_metrics` are measured on the engine's own norm weights (float32 when
        built for a policy with float32 norms, see `qerl.rollout.vllm.norms`)."""
        if check_sigma("noisy_norms", "sigma", sigma) == 0.0:
            yield
            return
        self._ready()
        with noisy_norms(self.policy, sigma, seed=seed, relative=relative) as applied:
            names, zs = list(applied), list(applied.values())
            host = torch.cat(zs).cpu().split([z.numel() for z in zs])  # one device-to-host copy of Z
            noise = {engine_name(name): z for name, z in zip(names, host, strict=True)}
            try:
                moved = self.llm.collective_rpc(worker.add_norm_noise, args=(noise,))[0]
                self.noise_metrics = engine_realized(moved, sigma, self, relative).metrics()
                self.llm.reset_prefix_cache()
                self._noise_sigma = sigma
                yield
            finally:
                self._noise_sigma = 0.0
                self.llm.collective_rpc(worker.restore_norms)
                self.llm.reset_prefix_cache()
