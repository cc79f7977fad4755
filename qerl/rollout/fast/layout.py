"""`DecoderLayout`: the modules of an HF decoder-only LM (Llama, Qwen2, Qwen3, Mistral shapes) the fast engine calls.

The engine runs its own decode loop over the policy's *own* submodules (q/k/v/o, gate/up/down, norms, embedding,
head), so whatever those modules are - `nn.Linear`, a 4-bit `QuantLinear` running the fused kernels, a peft LoRA
wrapper around either - is what runs, reading its weights in place: LoRA updates and AQN noise (in-place edits of
norm weights) reach a captured CUDA graph without re-capture.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qerl.models.logprobs import causal_lm


class FastPathError(RuntimeError):
    """The policy's architecture is not one the fast engine can run; the message says what to do."""


@dataclass
class LayerView:
    input_norm: nn.Module
    q: nn.Module
    k: nn.Module
    v: nn.Module
    o: nn.Module
    q_norm: nn.Module | None
    k_norm: nn.Module | None
    post_norm: nn.Module
    gate: nn.Module
    up: nn.Module
    down: nn.Module
    act: nn.Module


@dataclass
class DecoderLayout:
    embed: nn.Module
    layers: list[LayerView]
    norm: nn.Module
    head: nn.Module
    rotary: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float
    dtype: torch.dtype
    device: torch.device
    vocab_size: int


def _need(obj, path: str, where: str):
    cur = obj
    for part in path.split("."):
        if not hasattr(cur, part):
            raise FastPathError(
                f"Fast rollout engine: {where} has no `{path}` (missing `{part}`); its architecture "
                f"({type(obj).__name__}) is not a Llama/Qwen-style decoder. Use HF(fast=False) "
                "(rollout.init_args.fast: false) for this model.")
        cur = getattr(cur, part)
    return cur


def decoder_layout(policy: nn.Module) -> DecoderLayout:
    """The modules the engine needs, checked; raises `FastPathError` naming what is missing."""
    lm = causal_lm(policy)
    body = _need(lm, "model", type(lm).__name__)
    config = lm.config
    layers = []
    for i, layer in enumerate(_need(body, "layers", "model")):
        where = f"model.layers.{i}"
        attn, mlp = _need(layer, "self_attn", where), _need(layer, "mlp", where)
        if getattr(attn, "sliding_window", None):
            raise FastPathError(f"Fast rollout engine: {where}.self_attn uses sliding-window attention, which the "
                                "fast engine does not implement. Use HF(fast=False) for this model.")
        layers.append(LayerView(
            input_norm=_need(layer, "input_layernorm", where), q=_need(attn, "q_proj", where + ".self_attn"),
            k=_need(attn, "k_proj", where + ".self_attn"), v=_need(attn, "v_proj", where + ".self_attn"),
            o=_need(attn, "o_proj", where + ".self_attn"), q_norm=getattr(attn, "q_norm", None),
            k_norm=getattr(attn, "k_norm", None), post_norm=_need(layer, "post_attention_layernorm", where),
            gate=_need(mlp, "gate_proj", where + ".mlp"), up=_need(mlp, "up_proj", where + ".mlp"),
            down=_need(mlp, "down_proj", where + ".mlp"), act=_need(mlp, "act_fn", where + ".mlp")))
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    embed = _need(body, "embed_tokens", "model")
    weight = embed.weight
    return DecoderLayout(
        embed=embed, layers=layers, norm=_need(body, "norm", "model"), head=_need(lm, "lm_head", type(lm).__name__),
        rotary=_need(body, "rotary_emb", "model"), num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
        scaling=float(getattr(body.layers[0].self_attn, "scaling", head_dim ** -0.5)), dtype=weight.dtype,
        device=weight.device, vocab_size=int(config.vocab_size))


def weights_fingerprint(policy: nn.Module) -> tuple:
    """Identity of every tensor the engine reads and of the adapter switches; a change invalidates captured graphs.

    In-place edits (optimizer steps on LoRA, AQN noise on norms) keep the fingerprint: graphs read them live.
    """
    ptrs = tuple(t.data_ptr() for t in [*policy.parameters(), *policy.buffers()])
    switches = tuple((getattr(m, "disable_adapters", None), tuple(getattr(m, "active_adapters", ()) or ()),
                      bool(getattr(m, "merged", False)))
                     for m in policy.modules() if hasattr(m, "lora_A"))
    return ptrs, switches
