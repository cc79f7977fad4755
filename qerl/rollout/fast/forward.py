"""The decoder forward over the policy's own modules, writing K/V into the static cache (prefill and decode).

Attention groups query heads by their KV head (no repeated K/V), takes scores in float32 and masks keys by the
per-row valid mask (left padding, columns not yet written), like HF's eager attention.
"""
from __future__ import annotations

import torch

from qerl.rollout.fast.blocks import project, rms_norm, rope, rope_tables
from qerl.rollout.fast.layout import DecoderLayout
from qerl.rollout.fast.lora import run_group
from qerl.rollout.fast.state import DecodeState


def key_bias(mask: torch.Tensor) -> torch.Tensor:
    """(B, Tq, Tk) bool -> float32 additive bias (0 / -inf), shaped (B, 1, 1, Tq, Tk); built once per step."""
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(
        ~mask, float("-inf"))[:, None, None]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scaling: float) -> torch.Tensor:
    """q (B, H, Tq, D), k/v (B, KV, Tk, D), bias from `key_bias` -> (B, H, Tq, D); scores and softmax in float32."""
    b, h, tq, d = q.shape
    kv = k.shape[1]
    g = h // kv
    qg = q.reshape(b, kv, g * tq, d)
    scores = torch.add(bias, torch.matmul(qg, k.transpose(-1, -2)).view(b, kv, g, tq, -1), alpha=scaling)
    probs = torch.softmax(scores, dim=-1).to(v.dtype).view(b, kv, g * tq, -1)
    return torch.matmul(probs, v).view(b, h, tq, d)


def _layer(layout: DecoderLayout, i: int, h: torch.Tensor, cos, sin, state: DecodeState, rows: int, write, keys: int,
           mask: torch.Tensor) -> torch.Tensor:
    lv = layout.layers[i]
    b, t, _ = h.shape
    x = rms_norm(lv.input_norm, h)
    casts: dict = {}
    pack = state.lora.layers[i]
    q, k, v = (y.view(b, t, -1, layout.head_dim).transpose(1, 2)
               for y in run_group(pack["qkv"], [lv.q, lv.k, lv.v], x, casts))
    if lv.q_norm is not None:
        q, k = rms_norm(lv.q_norm, q), rms_norm(lv.k_norm, k)
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    kc, vc = state.k_cache[i][:rows], state.v_cache[i][:rows]
    write(kc, k)
    write(vc, v)
    out = attend(q, kc[:, :, :keys], vc[:, :, :keys], mask, layout.scaling)
    h = h + run_group(pack["o"], [lv.o], out.transpose(1, 2).reshape(b, t, -1), {})[0]
    x = rms_norm(lv.post_norm, h)
    gate, up = run_group(pack["gate_up"], [lv.gate, lv.up], x, {})
    return h + run_group(pack["down"], [lv.down], lv.act(gate).mul_(up), {})[0]


def _logits(layout: DecoderLayout, h_last: torch.Tensor) -> torch.Tensor:
    return project(layout.head, rms_norm(layout.norm, h_last), {})


def prefill(layout: DecoderLayout, state: DecodeState, ids: torch.Tensor, mask: torch.Tensor) -> None:
    """Run the prompts (B, P, left-padded) through the model; fill cache columns [0, P) and `state.logits`."""
    rows, width = ids.shape
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    h = layout.embed(ids)
    cos, sin = rope_tables(*layout.rotary(h, pos))
    causal = torch.ones((width, width), dtype=torch.bool, device=ids.device).tril()
    # a padded query sees only itself, so its (unused) output stays finite
    keys_mask = key_bias((causal[None] & mask.bool()[:, None, :])
                         | torch.eye(width, dtype=torch.bool, device=ids.device)[None])

    def write(cache, new):
        cache[:, :, :width].copy_(new)

    for i in range(len(layout.layers)):
        h = _layer(layout, i, h, cos, sin, state, rows, write, width, keys_mask)
    state.logits[:rows].copy_(_logits(layout, h[:, -1]))


def decode(layout: DecoderLayout, state: DecodeState, rows: int, keys: int) -> None:
    """One token per row (`state.cur_tok`) at column `state.col`; attends to columns [0, keys); advances pos/col."""
    col = state.col
    state.valid[:rows].index_fill_(1, col, True)
    tok = state.cur_tok[:rows].unsqueeze(1)
    pos = state.pos[:rows].unsqueeze(1)
    h = layout.embed(tok)
    cos, sin = rope_tables(*layout.rotary(h, pos))
    mask = key_bias(state.valid[:rows, :keys].unsqueeze(1))

    def write(cache, new):
        cache.index_copy_(2, col, new)

    for i in range(len(layout.layers)):
        h = _layer(layout, i, h, cos, sin, state, rows, write, keys, mask)
    state.logits[:rows].copy_(_logits(layout, h[:, -1]))
    state.pos[:rows] += 1
    state.col += 1
