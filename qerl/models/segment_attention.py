"""`qerl_packed`: the attention of a packed group (`qerl.models.packed`) computed segment by segment, no (L x L) mask.

A packed micro-batch is one sequence [prompt | completion 1 | ... | completion k] in which a completion attends to the
prompt and to itself only. With a dense block mask SDPA's masked kernel computes every one of the L^2 scores (at the
7B GSM8K shape ~4x the padded rows' attention; a group of 8 completions at a 4,096 cap: as much work as the matmuls)
and the mask itself costs 2 L^2 bytes. Here the prompt attends to itself causally (`is_causal`), and each completion's
queries attend to [prompt keys | its own keys] with a lower-right causal bias (`torch.nn.attention.bias.
causal_lower_right`: query t of n sees the prompt and keys 0..t of its own): the same scores, only the ones the mask
allows, through SDPA's flash or memory-efficient kernels, with no mask in memory.

HF picks a model's attention function by `config._attn_implementation`; `use_segment_attention` switches an `sdpa`
policy to `qerl_packed` for good (a gradient-checkpointed layer recomputes its forward during backward, after any
context manager would have switched it back). Without the `packed_segments` keyword `qerl_packed` is HF's `sdpa`
function with HF's `sdpa` masks, so every other forward of the policy (generation, padded rows) runs as before.
`packed_segments=(prompt_len, lengths, True)` computes the completions in one call instead of one each
(`_completions_in_one_call`: queries and keys gathered into rows padded to the longest completion): fewer launches,
more scores where the lengths differ, so only while the padding at most doubles them (`worth_one_call`).
Written here because neither HF nor PyTorch has it: HF's packed-sequence support gives each sequence its own
positions 0.. and no shared prefix; flex attention would do it with a compiled block mask (not used: it needs
torch.compile, which the recipes leave off).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

NAME = "qerl_packed"
#: what `PackedGroups` hands the decoder as its attention mask with `packed_segments`: a 4D tensor, which HF's mask
#: builders return as it is (no mask is built), and which this attention ignores
NO_MASK_SHAPE = (1, 1, 0, 0)
#: with `batched`, the completions attend in one padded call only while its scores are at most this many times the
#: ones each completion needs alone (a group with one completion at a 4,096 cap and seven of ~400 would compute ~5x)
ONE_CALL_WASTE = 2.0


def _sdpa(query, key, value, **kwargs) -> torch.Tensor:
    return F.scaled_dot_product_attention(query, key, value, **kwargs)


def _repeat_heads(states: torch.Tensor, heads: int) -> torch.Tensor:
    """Key/value heads repeated to the query heads (grouped-query attention), as HF's `repeat_kv`."""
    groups = heads // states.shape[1]
    return states if groups == 1 else states.repeat_interleave(groups, dim=1)


def segment_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                      dropout: float = 0.0, scaling: float | None = None, packed_segments=None, **kwargs):
    """HF attention function: (batch 1, heads, L, head_dim) states -> ((1, L, heads, head_dim) output, None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if packed_segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    from torch.nn.attention.bias import causal_lower_right

    prompt_len, lengths, *batched = packed_segments
    if query.shape[0] != 1 or query.shape[2] != prompt_len + sum(lengths):
        raise ValueError(f"qerl_packed: the packed sequence has {query.shape[2]} positions in a batch of "
                         f"{query.shape[0]}, its segments say 1 x {prompt_len + sum(lengths)}.")
    key, value = _repeat_heads(key, query.shape[1]), _repeat_heads(value, query.shape[1])
    p = prompt_len
    outs = [_sdpa(query[:, :, :p], key[:, :, :p], value[:, :, :p], dropout_p=dropout, is_causal=True, scale=scaling)]
    if batched and batched[0] and worth_one_call(p, lengths):
        rest = _completions_in_one_call(query, key, value, p, lengths, dropout, scaling)
        return torch.cat([outs[0].transpose(1, 2)[0], rest]).unsqueeze(0).contiguous(), None
    start = p
    for n in lengths:
        if n:
            end = start + n
            k = torch.cat([key[:, :, :p], key[:, :, start:end]], dim=2)
            v = torch.cat([value[:, :, :p], value[:, :, start:end]], dim=2)
            outs.append(_sdpa(query[:, :, start:end], k, v, dropout_p=dropout, attn_mask=causal_lower_right(n, p + n),
                              scale=scaling))
        start += n
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def worth_one_call(prompt_len: int, lengths) -> bool:
    """Whether one padded call for all completions computes at most `ONE_CALL_WASTE` times their own scores."""
    real = [n for n in lengths if n]
    if not real:
        return False
    widest = max(real)
    own = sum(n * (prompt_len + n) for n in real)
    return len(real) * widest * (prompt_len + widest) <= ONE_CALL_WASTE * own


@functools.lru_cache(maxsize=4)
def _one_call_index(prompt_len: int, lengths: tuple[int, ...], device: torch.device):
    """(index, valid) of `_completions_in_one_call`, each (k, N) for the k non-empty completions padded to the
    longest, N: the packed position of query t of each completion (padded slots repeat its last position: finite keys
    no real query attends to) and whether t is real. Built once per micro-batch on the device, then reused by every
    layer and by the checkpointed recompute."""
    starts, offset = [], prompt_len
    for n in lengths:  # k values on the host; the (k, N) tables below are built on the device
        starts.append(offset)
        offset += n
    real = [(start, n) for start, n in zip(starts, lengths) if n]
    starts = torch.tensor([start for start, _ in real], device=device)
    sizes = torch.tensor([n for _, n in real], device=device)
    steps = torch.arange(max(lengths), device=device)
    return starts[:, None] + torch.minimum(steps[None, :], sizes[:, None] - 1), steps[None, :] < sizes[:, None]


def _completions_in_one_call(query, key, value, p: int, lengths, dropout: float, scaling):
    """Every completion's attention in one SDPA call: the completions' queries gathered into (k, heads, N, head_dim)
    rows padded to the longest, N, and their keys into [prompt keys | own keys padded to N]; one lower-right causal
    bias (N, p + N) then lets query t of every row see the prompt and its own keys 0..t - a real query never reaches
    its row's padding, and the padded queries' outputs are dropped (their gradients are zero). Two calls a layer
    instead of one per completion, for at most k N (p + N) scores: the padded rows' attention without their prompt
    copies. Returns the completions' outputs in packed order, (sum(lengths), heads, head_dim)."""
    from torch.nn.attention.bias import causal_lower_right

    widest = max(lengths)
    index, valid = _one_call_index(p, tuple(lengths), query.device)

    def rows(states):  # (1, heads, L, d) -> (k, heads, N, d)
        return states[0][:, index].transpose(0, 1)

    def keys(states):  # (k, heads, p + N, d)
        own = rows(states)
        return torch.cat([states[:, :, :p].expand(own.shape[0], -1, -1, -1), own], dim=2)

    out = _sdpa(rows(query), keys(key), keys(value), dropout_p=dropout,
                attn_mask=causal_lower_right(widest, p + widest), scale=scaling)
    return out.transpose(1, 2)[valid]


def register() -> None:
    """Register `qerl_packed` with HF's attention and mask interfaces (registering again replaces the same entries)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, segment_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_segment_attention(config) -> bool:
    """Switch an `sdpa` model config to `qerl_packed` (registered first); True when the config now runs it."""
    if config._attn_implementation == "sdpa":
        register()
        config._attn_implementation = NAME
    return config._attn_implementation == NAME
