"""The rollout-backend extension point: prompts in, sampled completions out."""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from qerl.models.logprobs import causal_lm
from qerl.noise.inject import noisy_norms
from qerl.types import Rollout, SamplingConfig


def eos_token_ids(model: nn.Module, tokenizer) -> list[int]:
    """Every token that ends a completion: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    config = getattr(causal_lm(model), "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    if extra is not None:
        ids.update(int(i) for i in (extra if isinstance(extra, (list, tuple)) else [extra]))
    return sorted(ids)


@dataclass
class Piece:
    """Part of a rollout handed over while the engine generates the rest (`RolloutBackend.generate_pieces`).

    `complete`: `rollout` is prompt `index`'s whole group (`sampling.n` rows, in their final order) and `rows` the
    positions in it of the completions not handed over before. Otherwise `rollout` holds only completions that
    have just ended (its group size is their number) and `rows` their positions in the group."""

    index: int
    rollout: Rollout
    rows: list[int]
    complete: bool


class RolloutBackend(ABC):
    """Generates completions for the current policy.

    Lifecycle: `setup(policy, tokenizer)` once, then per step `sync_weights(policy)`
    (a no-op for a backend that generates with the policy itself), `noise(sigma, seed, relative)`
    around generation, and `generate(...)`.

    What the training module reads from every backend:
    `pad_id` (the token padding rollouts, set in `setup`), `last_metrics` (metrics of the last
    `generate` call, e.g. `rollout/mismatch_kl`; empty by default) and `max_batch_rows`
    (completions generated together, for the memory plan; None: the backend does not bound it).
    What it sets on every backend: `scoring_layout`, the update's layout (`qerl.models.logprobs.PaddedRows` or
    `qerl.models.packed.PackedGroups`), for a backend that runs the policy's own scoring forward (VLLM's
    `measure_mismatch`); None: the padded rows.
    """

    pad_id: int = 0
    scoring_layout = None
    eos_ids: list[int] = []  # noqa: RUF012 (replaced per instance in setup)
    max_batch_rows: int | None = None
    policy: nn.Module | None = None
    tokenizer = None
    _last_metrics: dict[str, float] = {}  # noqa: RUF012 (only ever replaced, through the setter)

    def setup(self, policy: nn.Module, tokenizer) -> None:
        """Bind to the policy and tokenizer (build an engine if the backend keeps one); sets `eos_ids` and `pad_id`."""
        self.policy = policy
        self.tokenizer = tokenizer
        self.eos_ids = eos_token_ids(policy, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0))

    @property
    def last_metrics(self) -> dict[str, float]:
        """Metrics of the last `generate` call (namespaced `rollout/...`); none by default."""
        return self._last_metrics

    @last_metrics.setter
    def last_metrics(self, metrics: dict[str, float]) -> None:
        self._last_metrics = dict(metrics)

    @abstractmethod
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> Rollout:
        """`sampling.n` completions for each prompt (token ids, no padding)."""

    #: True when `generate_groups` hands each group over while the engine still generates the others (`VLLM`), so
    #: the policy may train on it at once; False: the groups come after the whole batch is generated
    streams_groups: bool = False

    def generate_groups(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> Iterator[tuple[int, Rollout]]:
        """(prompt index, that prompt's rollout of `sampling.n` rows) for every prompt, as its group is ready.
        Default: `generate`, then the groups in prompt order. `finish_groups` follows the last one."""
        rollout = self.generate(prompt_ids, sampling)
        for g in range(len(prompt_ids)):
            yield g, rollout.select(rollout.group_index == g)

    #: True when `generate_pieces` hands over completions as they end (`VLLM`): see `Piece`
    streams_completions: bool = False

    def generate_pieces(self, prompt_ids: list[list[int]], sampling: SamplingConfig,
                        open_groups: int) -> Iterator[Piece]:
        """The rollout as `Piece`s: each group whole as it is ready and, while at most `open_groups` groups are
        still generating, their completions as they end. Default: `generate_groups`, every group whole."""
        for g, rollout in self.generate_groups(prompt_ids, sampling):
            yield Piece(g, rollout, list(range(rollout.num_rows)), complete=True)

    def finish_groups(self, rollout: Rollout, sampling: SamplingConfig) -> None:
        """After `generate_groups` and the training of its groups: work on the whole `rollout` that had to wait
        for the policy (VLLM: its mismatch forward); nothing by default (`generate` did it)."""

    def sync_weights(self, policy: nn.Module) -> None:
        """Push updated trainable weights (LoRA, norms) into the engine; no-op by default."""

    #: `noise/realized_sigma`, `noise/moved_fraction`, `noise/row_sigma` of the last `noise` block, on the weights
    #: the generating engine multiplies by (after its dtype); empty before any noise
    noise_metrics: ClassVar[dict[str, float]] = {}  # each backend assigns a new dict, never mutates this one

    @contextlib.contextmanager
    def noise(self, sigma: float, seed: int | None = None, relative: bool = False) -> Iterator[None]:
        """Apply AQN noise of `sigma` (`relative`: scaled by each norm weight's |w|) to the generating model's norms
        for the duration; sets `noise_metrics`."""
        with noisy_norms(self.policy, sigma, seed=seed, relative=relative) as applied:
            self.noise_metrics = applied.realized.metrics()
            yield

    def plan_rows(self, rows: int) -> str | None:
        """Told by the training module before `setup` how many completions one rollout call makes: a backend that
        sizes its engine by it (VLLM's `max_num_seqs: auto`) does so and returns the line saying how; None (default)
        when nothing is sized."""
        return None

    def engine_estimate(self, policy: nn.Module, device):
        """A colocated engine's GPU memory for `policy` (`qerl.memory.engine.EngineEstimate`), counted by the
        start-up memory plan; None (default) for a backend that generates with the policy itself."""

    def release_memory(self) -> None:
        """Free generation-only memory (KV cache) before training; optional."""
