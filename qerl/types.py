"""Typed data passed between the stages of a training step."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingConfig:
    """How completions are sampled for one rollout step.

    Attributes:
        n: completions per prompt (the GRPO group size).
        temperature: softmax temperature; 0 means greedy.
        top_p: nucleus sampling mass.
        max_new_tokens: cap on completion length.
        stop: strings that end a completion (kept in the text, like vLLM).
        seed: base seed for sampling; None draws from the global generator.
    """

    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Rollout:
    """Completions for a batch of prompts, `n` per prompt, flattened prompt-major.

    Row `i` belongs to prompt `group_index[i]`; rows of one group are contiguous.
    Tensors live on the policy's device.
    """

    prompt_ids: torch.Tensor  # (R, P) left-padded with pad id
    prompt_mask: torch.Tensor  # (R, P) 1 on real prompt tokens
    completion_ids: torch.Tensor  # (R, T) right-padded
    completion_mask: torch.Tensor  # (R, T) 1 on generated tokens (EOS included)
    logprobs: torch.Tensor  # (R, T) float32 log-prob of each sampled token under the sampler
    texts: list[str]  # decoded completions (special tokens skipped)
    group_index: torch.Tensor  # (R,) long, prompt index of each row
    truncated: torch.Tensor  # (R,) bool, hit max_new_tokens without EOS/stop
    group_size: int
    #: (R, T) optional per-token policy-gradient weights, e.g. truncated importance sampling for an engine
    #: whose log-probs differ from the policy's (`VLLM(importance_sampling_cap=...)`); None means 1.
    importance_weights: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        return int(self.completion_ids.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        """Generated tokens per row."""
        return self.completion_mask.sum(dim=1)


@dataclass
class PromptBatch:
    """A batch from a prompt DataModule: chat-formatted prompts and gold answers."""

    prompts: list[str]
    answers: list[str]
    meta: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class LossOutput:
    """A scalar loss and the metrics an algorithm reports alongside it."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
