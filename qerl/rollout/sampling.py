"""One decoding step: temperature and top-p applied to logits, a token drawn, its log-prob under what was sampled."""
from __future__ import annotations

import torch


def processed_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-softmax of `logits` (B, V) after temperature scaling and top-p (nucleus) filtering, float32.

    Top-p keeps the smallest set of most likely tokens whose mass reaches `top_p` (the most
    likely token always stays); the rest get -inf. Temperature <= 0 (greedy) leaves logits unscaled.
    """
    scaled = logits.float()
    if temperature > 0 and temperature != 1.0:
        scaled = scaled / temperature
    if 0.0 < top_p < 1.0:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.log_softmax(scaled, dim=-1)


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from `logits` (B, V); return (tokens (B,), their processed log-probs (B,)).

    Temperature <= 0 picks the argmax (greedy); its log-prob is then that of the unscaled softmax.
    """
    logprobs = processed_logprobs(logits, temperature, top_p)
    if temperature <= 0:
        tokens = logprobs.argmax(dim=-1)
    else:
        tokens = torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one left-padded (B, width) id tensor and its attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long, device=device)
        mask[i, width - len(r) :] = 1
    return ids, mask
