"""Per-token log-probs (and entropy) of completions under a causal LM, chunked over the sequence.

The backbone runs once; the LM head, log-softmax and gather then run on chunks of
completion positions inside activation checkpoints, so a (rows x tokens x vocab)
float32 logits tensor never exists, in the forward or in the backward pass.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from qerl.types import Rollout

#: logits elements (rows x positions x vocab) materialised at once, ~256 MB in float32
DEFAULT_LOGITS_BUDGET = 1 << 26


def causal_lm(model: nn.Module) -> nn.Module:
    """The HF causal LM inside a peft wrapper (LoRA layers stay injected), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: 0 at each row's first real token (as HF `generate` does)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class TokenLogprobs:
    """Log-probs of the given completion tokens, (R, T) float32, and optionally the entropy per position."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None


def _head_chunk(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool):
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return picked, None
    with torch.no_grad():
        probs = torch.softmax(logits.detach(), dim=-1)
        entropy = lse.detach() - (probs * logits.detach()).sum(-1)
    return picked, entropy


def head_logprobs(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                  with_entropy: bool, logits_budget: int = DEFAULT_LOGITS_BUDGET):
    """Log-probs of `targets` (B, N) from the hidden states that predict them (B, N, D), and the entropy per position
    if asked: the LM head and log-softmax on chunks of positions (at most `logits_budget` logits at once), each
    chunk inside an activation checkpoint when gradients flow. `temperature` > 0."""
    rows, length = targets.shape
    vocab = int(head.weight.shape[0])
    step = max(1, int(logits_budget) // max(1, rows * vocab))
    use_checkpoint = torch.is_grad_enabled() and hidden.requires_grad
    picked, entropies = [], []
    for start in range(0, length, step):
        h = hidden[:, start : start + step]
        t = targets[:, start : start + step]
        if use_checkpoint:
            from torch.utils.checkpoint import checkpoint

            lp, ent = checkpoint(_head_chunk, head, h, t, temperature, with_entropy, use_reentrant=False)
        else:
            lp, ent = _head_chunk(head, h, t, temperature, with_entropy)
        picked.append(lp)
        if ent is not None:
            entropies.append(ent)
    logprobs = torch.cat(picked, dim=1) if picked else hidden.new_zeros(rows, 0, dtype=torch.float32)
    entropy = torch.cat(entropies, dim=1) if with_entropy and entropies else None
    return logprobs, entropy


def completion_logprobs(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    logits_budget: int = DEFAULT_LOGITS_BUDGET,
) -> TokenLogprobs:
    """Log-probs of `completion_ids` (R, T) after left-padded `prompt_ids` (R, P) under `model`.

    Logits are divided by `temperature` (> 0) like the sampler's, so with top-p 1 these equal the
    rollout's sampling log-probs up to numerics. Positions where `completion_mask` is 0 hold
    meaningless values; mask them. Gradients flow when grad mode is on.
    """
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    decoder = lm.get_decoder()
    temperature = float(temperature) if temperature and temperature > 0 else 1.0
    prompt_len = prompt_ids.shape[1]
    length = completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1).long()
    out = decoder(input_ids=input_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
    hidden = out.last_hidden_state[:, prompt_len - 1 : prompt_len - 1 + length]
    logprobs, entropy = head_logprobs(head, hidden, completion_ids, temperature, with_entropy, logits_budget)
    return TokenLogprobs(logprobs=logprobs, entropy=entropy)


def trim_padding(prompt_ids, prompt_mask, completion_ids, completion_mask):
    """Drop prompt columns that are padding in every row and completion columns past the longest completion."""
    keep_prompt = prompt_mask.bool().any(dim=0)
    first = int(keep_prompt.nonzero()[0]) if keep_prompt.any() else prompt_ids.shape[1] - 1
    longest = int(completion_mask.sum(dim=1).max()) if completion_mask.numel() else 0
    longest = max(1, longest)
    return (prompt_ids[:, first:], prompt_mask[:, first:], completion_ids[:, :longest], completion_mask[:, :longest])


def micro_batches(completion_mask: torch.Tensor, size: int):
    """Row-index groups of at most `size` rows covering every row, longest completions first, so that each
    micro-batch pads only to its own longest completion: with ragged lengths (a few completions at the cap), rows
    taken in order would pad most micro-batches to the cap. Losses and gradients sum over micro-batches with the
    batch's own normalisers, so the grouping changes only the order of the sums."""
    order = torch.argsort(completion_mask.sum(dim=1), descending=True, stable=True)
    for start in range(0, order.numel(), size):
        yield order[start:start + size]


def padded_positions(completion_mask: torch.Tensor, size: int) -> int:
    """Completion positions the micro-batches of `micro_batches` compute, padding included (rows x longest row)."""
    return sum(len(rows) * int(completion_mask[rows].sum(dim=1).max()) for rows in micro_batches(completion_mask, size))


def rollout_inputs(rollout: Rollout, rows: torch.Tensor):
    """The prompt and completion tensors of `rows`, their shared padding trimmed."""
    return trim_padding(rollout.prompt_ids[rows], rollout.prompt_mask[rows], rollout.completion_ids[rows],
                        rollout.completion_mask[rows])


class PaddedRows:
    """The default training layout: micro-batches of whole rows grouped by completion length (`micro_batches`), each
    row its prompt (left-padded) and completion (right-padded) in one (rows x positions) batch. The other layout,
    `qerl.models.packed.PackedGroups`, packs one group's completions behind a single copy of their prompt."""

    name = "rows"

    def check(self, model: nn.Module) -> None:
        """Every policy takes padded rows."""

    def batches(self, rollout: Rollout, size: int):
        return micro_batches(rollout.completion_mask, size)

    def logprobs(self, model: nn.Module, rollout: Rollout, rows: torch.Tensor, temperature: float,
                 with_entropy: bool = False) -> TokenLogprobs:
        """(len(rows), W) log-probs of the rows' completions, W their longest completion (at least 1)."""
        p_ids, p_mask, c_ids, c_mask = rollout_inputs(rollout, rows)
        return completion_logprobs(model, p_ids, p_mask, c_ids, c_mask, temperature=temperature,
                                   with_entropy=with_entropy)

    def positions(self, rollout: Rollout, size: int) -> int:
        """Positions the decoder computes over the whole rollout, prompts and padding included."""
        total = 0
        for rows in self.batches(rollout, size):
            p_ids, _, c_ids, _ = rollout_inputs(rollout, rows)
            total += len(rows) * (p_ids.shape[1] + c_ids.shape[1])
        return total


@torch.no_grad()
def stored_logprobs(model: nn.Module, rollout: Rollout, micro_batch_size: int, temperature: float,
                    context: Callable[[], contextlib.AbstractContextManager] | None = None,
                    layout: PaddedRows | None = None) -> torch.Tensor:
    """(R, T) log-probs of the rollout's completions without gradients (old policy, or reference inside `context`)."""
    layout = layout if layout is not None else PaddedRows()
    out = torch.zeros(rollout.completion_ids.shape, dtype=torch.float32, device=rollout.completion_ids.device)
    for rows in layout.batches(rollout, micro_batch_size):
        with context() if context is not None else contextlib.nullcontext():
            lp = layout.logprobs(model, rollout, rows, temperature).logprobs
        out[rows, : lp.shape[1]] = lp
    return out
