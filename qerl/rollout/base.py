"""The rollout-backend extension point: prompts in, sampled completions out."""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import ClassVar

from torch import nn

from qerl.types import Rollout, SamplingConfig


class RolloutBackend(ABC):
    """Generates completions for the current policy.

    Lifecycle: `setup(policy, tokenizer)` once, then per step `sync_weights(policy)`
    (a no-op for a backend that generates with the policy itself), `noise(sigma, seed)`
    around generation, and `generate(...)`.
    """

    def setup(self, policy: nn.Module, tokenizer) -> None:
        """Bind to the policy and tokenizer (build an engine if the backend keeps one)."""
        self.policy = policy
        self.tokenizer = tokenizer

    @abstractmethod
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> Rollout:
        """`sampling.n` completions for each prompt (token ids, no padding)."""

    def sync_weights(self, policy: nn.Module) -> None:
        """Push updated trainable weights (LoRA, norms) into the engine; no-op by default."""

    #: `noise/realized_sigma` and `noise/moved_fraction` of the last `noise` block, measured on the weights
    #: the generating engine multiplies by (after its dtype); empty before any noise
    noise_metrics: ClassVar[dict[str, float]] = {}  # each backend assigns a new dict, never mutates this one

    @contextlib.contextmanager
    def noise(self, sigma: float, seed: int | None = None) -> Iterator[None]:
        """Apply AQN noise of `sigma` to the generating model's norms for the duration; sets `noise_metrics`."""
        from qerl.noise.inject import noisy_norms

        with noisy_norms(self.policy, sigma, seed=seed) as applied:
            self.noise_metrics = applied.realized.metrics()
            yield

    def release_memory(self) -> None:
        """Free generation-only memory (KV cache) before training; optional."""
