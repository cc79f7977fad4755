"""Layers that inference engines fuse, and the per-tensor scale they must therefore share.

vLLM loads q/k/v into one `qkv_proj` and gate/up into one `gate_up_proj`. For NVFP4 a fused layer holds ONE
tensor scale: vLLM 0.22 takes the largest stored divisor (the smallest multiplier) of its shards and applies it
to all of them, so shards quantized with their own tensor scales are dequantized wrongly there - weights scaled
by amax_min / amax_shard, a different function from the one the policy trains on (on a random Qwen2.5-7B this
alone is a rollout mismatch KL of ~0.045 nats/token, `benchmarks/probes/mismatch_depth.py`). llm-compressor gives fused shards one tensor scale for the same reason;
qerl does it when it quantizes (`Quantizer.shares_tensor_scale`), and the vLLM backend refuses to serve packed
a base whose fused shards disagree (`unshared_tensor_scales`).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

#: shard name -> the fused layer it joins in vLLM (Llama/Qwen/Mistral-style decoders)
FUSED_SHARDS = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


def fused_groups(names: Iterable[str]) -> dict[str, list[str]]:
    """{fused layer name: its shard layer names} for the shards among `names` (groups of one are left out)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        parent, _, leaf = name.rpartition(".")
        if leaf in FUSED_SHARDS:
            groups.setdefault(f"{parent}.{FUSED_SHARDS[leaf]}" if parent else FUSED_SHARDS[leaf], []).append(name)
    return {fused: shards for fused, shards in groups.items() if len(shards) > 1}


def shared_amax(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """{shard name: the largest |weight| over its fused group} for every shard of a fused group in `names`."""
    out: dict[str, torch.Tensor] = {}
    for shards in fused_groups(names).values():
        amax = torch.stack([model.get_submodule(n).weight.detach().abs().amax().float() for n in shards]).amax()
        out.update(dict.fromkeys(shards, amax))
    return out


def unshared_tensor_scales(model: nn.Module) -> str | None:
    """Why `model`'s NVFP4 base cannot be served packed by vLLM (fused shards with different tensor scales), or
    None when every fused group shares one."""
    scales = {n.removesuffix(".base_layer"): m.global_scale for n, m in model.named_modules()  # peft wraps layers
              if hasattr(m, "global_scale")}
    for fused, shards in fused_groups(scales).items():
        values = [float(scales[n]) for n in shards]
        if max(values) != min(values):
            return (f"the shards of {fused} ({', '.join(n.rpartition('.')[2] for n in shards)}) have different NVFP4 "
                    f"tensor scales ({min(values):.4g} to {max(values):.4g}); vLLM applies one to the fused layer, "
                    "which would serve other weights than the policy's. Re-quantize the base with this qerl "
                    "(it gives fused shards one tensor scale)")
    return None
