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
    """`noise` for a backend holding `llm`, `policy`, `_noise_args` ((sigma, seed, relative) of the block it is in) and `_ready()`."""

    @contextlib.contextmanager
    def noise(self, sigma: float, seed: int | None = None, relative: bool = False) -> Iterator[None]:
        """AQN on the engine's RMSNorms (found by vLLM's class) and the policy's: the same Z, restored exactly.

        `relative` noise is scaled by the policy's norm weights (`noisy_norms`), which the engine holds too; the
        engine adds that Z as it is. `noise_metrics` are measured on the engine's own norm weights (float32 when
        built for a policy with float32 norms, see `qerl.rollout.vllm.norms`)."""
        with self._engine_noise(sigma, seed, relative, keep_policy_noisy=True):
            yield

    @contextlib.contextmanager
    def engine_noise(self, sigma: float, seed: int | None = None, relative: bool = False) -> Iterator[None]:
        """The same Z as `noise` in the engine only: the policy's norms are clean again before the block runs (it
        trains while the engine streams groups, `qerl.rollout.vllm.stream`); `_noise_args` lets a later scoring
        forward put the Z back on the policy."""
        with self._engine_noise(sigma, seed, relative, keep_policy_noisy=False):
            yield

    @contextlib.contextmanager
    def _engine_noise(self, sigma: float, seed: int | None, relative: bool, keep_policy_noisy: bool) -> Iterator[None]:
        if check_sigma("noisy_norms", "sigma", sigma) == 0.0:
            yield
            return
        self._ready()
        with contextlib.ExitStack() as policy_noise:
            applied = policy_noise.enter_context(noisy_norms(self.policy, sigma, seed=seed, relative=relative))
            names, zs = list(applied), list(applied.values())
            host = torch.cat(zs).cpu().split([z.numel() for z in zs])  # one device-to-host copy of Z
            noise = {engine_name(name): z for name, z in zip(names, host, strict=True)}
            if not keep_policy_noisy:
                policy_noise.close()  # the policy's norms restored exactly; the engine gets the Z below
            try:
                moved = self.llm.collective_rpc(worker.add_norm_noise, args=(noise,))[0]
                self.noise_metrics = engine_realized(moved, sigma, self, relative).metrics()
                self.llm.reset_prefix_cache()
                self._noise_args = (sigma, seed, relative)
                yield
            finally:
                self._noise_args = (0.0, None, False)
                self.llm.collective_rpc(worker.restore_norms)
                self.llm.reset_prefix_cache()
