"""`LoraPack`: the policy's LoRA adapters packed for the decode step, refreshed at every generate call.

peft keeps adapters in float32 next to a bf16 base; computing them as peft does costs a cast and two float32
GEMMs per projection. The engine instead keeps, per decoder layer, one buffer of the A matrices of the
projections that share an input (q|k|v, gate|up, o, down) concatenated, and the B matrices, in the activation
dtype. `refresh()` copies the live adapter weights into these buffers in place (one pass over ~0.3 GB for a 7B
model at r32) at the start of every generate call, so a captured graph always sees the current LoRA; the
projection then costs one shared A GEMM, and one B GEMM + in-place add per output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qerl.quantizers.layers import QuantLinear
from qerl.rollout.fast.blocks import base_outputs, plain_lora, project


class _Group:
    """Projections sharing one input: packed A (sum of ranks, in), per-projection B (out, r) and scaling."""

    def __init__(self, modules: list[nn.Module], dtype: torch.dtype) -> None:
        self.modules = modules
        self.names = [m.active_adapters[0] for m in modules]
        a = [m.lora_A[n].weight for m, n in zip(modules, self.names)]
        self.ranks = [t.shape[0] for t in a]
        self.a = torch.empty((sum(self.ranks), a[0].shape[1]), dtype=dtype, device=a[0].device)
        self.b = [torch.empty_like(m.lora_B[n].weight, dtype=dtype) for m, n in zip(modules, self.names)]
        self.scaling = [float(m.scaling[n]) for m, n in zip(modules, self.names)]

    def refresh(self) -> None:
        self.a.copy_(torch.cat([m.lora_A[n].weight.detach() for m, n in zip(self.modules, self.names)]))
        for buf, m, n in zip(self.b, self.modules, self.names):
            buf.copy_(m.lora_B[n].weight.detach())

    def apply(self, x: torch.Tensor, outs: list[torch.Tensor]) -> list[torch.Tensor]:
        """outs[i] += (x A_i^T) B_i^T * scaling_i, in place."""
        xa = F.linear(x.to(self.a.dtype), self.a).split(self.ranks, dim=-1)
        for out, part, b, s in zip(outs, xa, self.b, self.scaling):
            out.add_(F.linear(part, b), alpha=s)
        return outs


def _packable(modules: list[nn.Module]) -> bool:
    return all(plain_lora(m) and len(m.active_adapters) == 1 and m.active_adapters[0] in m.lora_A
               for m in modules)


class LoraPack:
    """Per layer: {"qkv": _Group | None, "o": ..., "gate_up": ..., "down": ...} (None: call the module as is)."""

    def __init__(self, layout) -> None:
        self.layers = []
        for lv in layout.layers:
            groups = {"qkv": [lv.q, lv.k, lv.v], "o": [lv.o], "gate_up": [lv.gate, lv.up], "down": [lv.down]}
            self.layers.append({k: _Group(m, layout.dtype) if _packable(m) else None for k, m in groups.items()})

    def refresh(self) -> None:
        with torch.no_grad():
            for layer in self.layers:
                for group in layer.values():
                    if group is not None:
                        group.refresh()


def run_group(group: _Group | None, modules: list[nn.Module], x: torch.Tensor, casts: dict) -> list[torch.Tensor]:
    """The outputs of `modules` on the shared input x: base layers + packed LoRA, or the modules themselves."""
    if group is None:
        if all(isinstance(m, QuantLinear) for m in modules):
            return base_outputs(modules, x)
        return [project(m, x, casts) for m in modules]
    return group.apply(x, base_outputs([m.base_layer for m in modules], x))
