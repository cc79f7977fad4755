"""Fewer-kernel versions of the decoder's small blocks, computing what the HF/peft modules compute.

A captured decode step is bound by its number of kernels as much as by weight bytes, so the engine:
- runs RMSNorm as one `F.rms_norm` (reading the module's weight in place, so AQN noise applies) instead of
  HF's eight elementwise kernels; a float32 weight next to bf16 activations (AQN norms kept in float32) is
  normalized and scaled in float32, rounded once to the activation dtype, as `qerl.noise.precision` makes the HF
  module do - on CUDA in one Triton kernel (`qerl.kernels.rms_norm`), elsewhere with two casts around
  `F.rms_norm`; unknown norm types are called as modules;
- runs a peft LoRA layer as base(x) + (x A^T) B^T * scaling, added in place, with the input cast to the
  adapter dtype once for the projections that share it (q/k/v, gate/up); LoRA weights are read in place;
  a layer with adapters disabled, merged, or a LoRA variant (DoRA...) is called as the module;
- runs the 4-bit base layers of projections that share an input (q|k|v, gate|up) as one grouped kernel
  launch on CUDA where it applies (`qerl.kernels.quant_linear_group`), the same sums as layer by layer;
- applies rotary embeddings as x*cos + roll(x)*sin_signed (three kernels, the same arithmetic).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qerl.quantizers.layers import QuantLinear

_RMS_NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm")


def norm_scale(module: nn.Module) -> torch.Tensor:
    """The per-channel scale `rms_norm` multiplies by: the module's own weight, in its own dtype (read in place)."""
    return module.weight


def rms_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    eps = getattr(module, "variance_epsilon", None)
    if type(module).__name__ not in _RMS_NORMS or eps is None:
        return module(x)
    weight = norm_scale(module)
    if weight.dtype == x.dtype:
        return F.rms_norm(x, (x.shape[-1],), weight=weight, eps=eps)
    if x.is_cuda and _float32_weight_kernel(x, weight):  # the same arithmetic in one kernel instead of three
        from qerl.kernels.rms_norm import rms_norm_f32w

        return rms_norm_f32w(x, weight, eps)
    return F.rms_norm(x.to(weight.dtype), (x.shape[-1],), weight=weight, eps=eps).to(x.dtype)


def _float32_weight_kernel(x: torch.Tensor, weight: torch.Tensor) -> bool:
    from qerl import kernels

    if not kernels.available():
        return False
    from qerl.kernels.rms_norm import supports

    return supports(x, weight)


def plain_lora(module: nn.Module) -> bool:
    return (hasattr(module, "lora_A") and hasattr(module, "base_layer") and not module.disable_adapters
            and not module.merged and not getattr(module, "lora_variant", None))


def base_outputs(bases: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """``[base(x) for base in bases]``; 4-bit layers on CUDA in one grouped launch where the kernel applies."""
    if len(bases) > 1 and x.is_cuda and all(isinstance(b, QuantLinear) and b.uses_kernels for b in bases):
        from qerl import kernels

        if kernels.available():
            outs = kernels.quant_linear_group(x, bases)
            if outs is not None:
                return outs
    return [b(x) for b in bases]


def project(module: nn.Module, x: torch.Tensor, casts: dict) -> torch.Tensor:
    """module(x); for a plain peft LoRA layer, the same sum with fewer kernels (`casts` shares input casts)."""
    if not plain_lora(module):
        return module(x)
    out = module.base_layer(x)
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        a = module.lora_A[name].weight
        xa = casts.get(a.dtype)
        if xa is None:
            xa = casts[a.dtype] = x.to(a.dtype)
        out.add_(F.linear(F.linear(xa, a), module.lora_B[name].weight), alpha=float(module.scaling[name]))
    return out


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin with its first half negated), shaped to broadcast over heads: (B, 1, T, D)."""
    half = sin.shape[-1] // 2
    signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos.unsqueeze(1), signed.unsqueeze(1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """HF's x*cos + rotate_half(x)*sin: rotate_half(x) = roll(x, D/2) with the first half negated."""
    return torch.addcmul(x * cos, torch.roll(x, x.shape[-1] // 2, dims=-1), sin_signed)
