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
Written here because neither HF nor PyTorch has it: HF's packed-sequence support gives each sequence its own
positions 0.. and no shared prefix; flex attention would do it with a compiled block mask (not used: it needs
torch.compile, which the recipes leave off).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "qerl_packed"
#: what `PackedGroups` hands the decoder as its attention mask with `packed_segments`: a 4D tensor, which HF's mask
#: builders return as it is (no mask is built), and which this attention ignores
NO_MASK_SHAPE = (1, 1, 0, 0)


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

    prompt_len, lengths = packed_segments
    if query.shape[0] != 1 or query.shape[2] != prompt_len + sum(lengths):
        raise ValueError(f"qerl_packed: the packed sequence has {query.shape[2]} positions in a batch of "
                         f"{query.shape[0]}, its segments say 1 x {prompt_len + sum(lengths)}.")
    key, value = _repeat_heads(key, query.shape[1]), _repeat_heads(value, query.shape[1])
    p = prompt_len
    outs = [_sdpa(query[:, :, :p], key[:, :, :p], value[:, :, :p], dropout_p=dropout, is_causal=True, scale=scaling)]
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
