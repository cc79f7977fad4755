"""Typed data passed between the stages of a training step."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import nn


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

    @classmethod
    def from_rows(cls, prompts: list[list[int]], completions: list[list[int]], logprobs: list[list[float]],
                  truncated: list[bool], texts: list[str], group_size: int, pad_id: int,
                  device: torch.device | str = "cpu") -> Rollout:
        """A rollout from unpadded token lists, one per row (prompts left-padded, completions right-padded)."""
        rows, prompt_w, comp_w = len(prompts), max(len(p) for p in prompts), max(1, *(len(c) for c in completions))
        p_ids = torch.full((rows, prompt_w), pad_id, dtype=torch.long)
        p_mask = torch.zeros((rows, prompt_w), dtype=torch.long)
        c_ids = torch.full((rows, comp_w), pad_id, dtype=torch.long)
        c_mask = torch.zeros((rows, comp_w), dtype=torch.long)
        lps = torch.zeros((rows, comp_w), dtype=torch.float32)
        for i, (prompt, ids, lp) in enumerate(zip(prompts, completions, logprobs)):
            p_ids[i, prompt_w - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            p_mask[i, prompt_w - len(prompt):] = 1
            if ids:
                c_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                c_mask[i, : len(ids)] = 1
                lps[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        return cls(prompt_ids=p_ids.to(device), prompt_mask=p_mask.to(device), completion_ids=c_ids.to(device),
                   completion_mask=c_mask.to(device), logprobs=lps.to(device), texts=list(texts),
                   group_index=torch.arange(rows // group_size, device=device).repeat_interleave(group_size),
                   truncated=torch.tensor(truncated, dtype=torch.bool, device=device), group_size=group_size)

    def select(self, rows: torch.Tensor) -> Rollout:
        """The rows where the bool mask `rows` (R,) is True - whole groups - with group indices renumbered."""
        keep = rows.tolist()
        picked = {f.name: getattr(self, f.name)[rows] for f in fields(self)
                  if isinstance(getattr(self, f.name), torch.Tensor) and f.name != "group_index"}
        picked["texts"] = [t for t, k in zip(self.texts, keep) if k]
        return self._with_groups(picked, self.group_size)

    def subgroup(self, rows: list[int]) -> Rollout:
        """Rows `rows` of a one-prompt rollout as a group of their own (group size: their number)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.completion_ids.device)
        picked = {f.name: getattr(self, f.name)[index] for f in fields(self)
                  if isinstance(getattr(self, f.name), torch.Tensor) and f.name != "group_index"}
        picked["texts"] = [self.texts[i] for i in rows]
        return self._with_groups(picked, len(rows))

    @classmethod
    def concat(cls, parts: list[Rollout], pad_id: int) -> Rollout:
        """Join rollouts of one group size, row-wise: prompts left-padded, completions right-padded to the widest."""
        joined: dict = {"texts": [t for r in parts for t in r.texts]}
        for name, (value, left) in _PADDING.items():
            tensors = [getattr(r, name) for r in parts]
            if any(t is None for t in tensors):
                continue  # an optional field (importance weights) is kept only when every part has it
            width = max(t.shape[1] for t in tensors)
            pad = pad_id if value is None else value
            joined[name] = torch.cat([nn.functional.pad(t, (width - t.shape[1], 0) if left else (0, width - t.shape[1]),
                                                        value=pad) for t in tensors])
        joined["truncated"] = torch.cat([r.truncated for r in parts])
        return cls._with_groups(joined, parts[0].group_size)

    @classmethod
    def _with_groups(cls, values: dict, group_size: int) -> Rollout:
        rows = values["completion_ids"].shape[0]
        group_index = torch.arange(rows // group_size, device=values["completion_ids"].device)
        return cls(**values, group_index=group_index.repeat_interleave(group_size), group_size=group_size)


#: padding of the (R, width) fields of a Rollout when rollouts are joined: (value, None = the pad id; left-padded?)
_PADDING: dict[str, tuple[float | None, bool]] = {
    "prompt_ids": (None, True), "prompt_mask": (0, True), "completion_ids": (None, False),
    "completion_mask": (0, False), "logprobs": (0.0, False), "importance_weights": (0.0, False),
}


@dataclass
class PromptBatch:
    """A batch from a prompt DataModule: chat-formatted prompts and gold answers."""

    prompts: list[str]
    answers: list[str]
    meta: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, index: int) -> PromptBatch:
        """The batch of prompt `index` alone."""
        return PromptBatch(prompts=[self.prompts[index]], answers=[self.answers[index]],
                           meta=[self.meta[index]] if self.meta else [])


@dataclass
class LossOutput:
    """A scalar loss and the metrics an algorithm reports alongside it."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
