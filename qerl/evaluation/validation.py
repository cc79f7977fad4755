"""Validation during `qerl fit`: held-out prompts sampled and scored in Lightning's validation loop, logged as `val/...`.

Lightning decides when (`trainer.val_check_interval`: every N training batches, or
`trainer.check_val_every_n_epoch`); the data module supplies the held-out prompts (`val_size`/`val_split`);
`QeRLModule.validation_step` hands each batch to `ValidationRun`, which scores it with `qerl.evaluation.evaluate`
and logs `val/accuracy`, `val/pass@k`, `val/mean_length`, `val/truncated_frac`, `val/mean_reward` and
`val/tokens_per_s` at the end of the loop. Sampling here never carries AQN noise.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qerl.evaluation.evaluate import EvalTotals, evaluate_batch, summarize
from qerl.parallel import gather_objects, is_distributed
from qerl.rewards.base import Reward
from qerl.rollout.base import RolloutBackend
from qerl.types import PromptBatch, SamplingConfig


@dataclass
class ValidationSettings:
    """How held-out prompts are sampled during `qerl fit` (the paper's eval: temperature 0.6, top-p 0.95).

    Attributes:
        n_samples: completions per prompt (pass@k is reported for k = 1, 2, 4, ... up to n_samples).
        temperature: sampling temperature (0 is greedy).
        top_p: nucleus sampling mass.
        max_new_tokens: completion cap; None uses the training `sampling.max_new_tokens`.
        seed: sampling seed; the same held-out prompts get the same random draws at every validation.
    """

    n_samples: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int | None = None
    seed: int = 1234

    def sampling(self, training: SamplingConfig) -> SamplingConfig:
        """The SamplingConfig of validation, stop strings and the default length taken from training's."""
        if self.n_samples < 1:
            raise ValueError(f"`model.init_args.validation.n_samples` must be >= 1, got {self.n_samples}.")
        return SamplingConfig(n=self.n_samples, temperature=self.temperature, top_p=self.top_p,
                              max_new_tokens=self.max_new_tokens or training.max_new_tokens,
                              stop=list(training.stop), seed=self.seed)


class ValidationRun:
    """Collects the scored completions of one validation loop and turns them into `val/` metrics."""

    def __init__(self, settings: ValidationSettings, training: SamplingConfig) -> None:
        self.sampling = settings.sampling(training)
        self.records: list = []
        self.totals = EvalTotals()
        self.prompts_seen = 0

    def step(self, rollout: RolloutBackend, tokenizer, rewards: list[Reward], accuracy_index: int, batch) -> None:
        """Sample and score one batch of held-out prompts with the training's rollout backend and rewards."""
        batch = batch[0] if isinstance(batch, tuple) else batch
        if not isinstance(batch, PromptBatch):
            raise TypeError(f"validation_step expects a PromptBatch from the data module's val_dataloader, got "
                            f"{type(batch).__name__}.")
        self.records.extend(evaluate_batch(rollout, tokenizer, batch, rewards,
                                           dataclasses.replace(self.sampling, stop=list(self.sampling.stop)),
                                           self.prompts_seen, accuracy_index, self.totals))
        self.prompts_seen += len(batch)

    def gather_ranks(self) -> None:
        """Under DDP (each rank validated its share of the held-out prompts): every rank's completions, prompts
        renumbered after the previous ranks', so the `val/` metrics are over all of them. No-op in one process."""
        if not is_distributed():
            return
        records, offset, parts = [], 0, gather_objects((self.records, self.totals, self.prompts_seen))
        for part_records, _, seen in parts:
            records.extend(dataclasses.replace(r, prompt_index=r.prompt_index + offset) for r in part_records)
            offset += seen
        self.records = records
        self.totals = EvalTotals(tokens=sum(p[1].tokens for p in parts), seconds=max(p[1].seconds for p in parts),
                                 cpu_seconds=sum(p[1].cpu_seconds for p in parts))

    def metrics(self) -> dict[str, float]:
        """`val/<metric>` of everything collected (empty when no batch ran)."""
        if not self.records:
            return {}
        summary = summarize(self.records, self.totals)
        keep = ("accuracy", "mean_length", "truncated_frac", "mean_reward", "tokens_per_s", "num_prompts")
        return {f"val/{k}": float(v) for k, v in summary.items() if k in keep or k.startswith("pass@")}
