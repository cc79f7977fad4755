"""Merging a LoRA adapter into a dense copy of its 4-bit base: `merge_to_dense(peft_model) -> nn.Module`.

A sum of a 4-bit weight and a LoRA update is not 4-bit, so the merge happens on the dequantized base: each
`QuantLinear` becomes a dense `nn.Linear` holding `dequantize(W) + (alpha / r) * B @ A` (float32 math, one
rounding to the target dtype at the end); layers without an adapter are dequantized as they are. The result is the
plain Hugging Face model that `save_pretrained` writes and transformers (or vLLM) loads with no qerl code.
"""
from __future__ import annotations

import torch
from torch import nn

from qerl.quantizers.layers import QuantLinear


def _dense_linear(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(weight.to(dtype))
        if bias is not None:
            layer.bias.copy_(bias.to(dtype))
    layer.weight.requires_grad_(False)
    return layer


def _lora_delta(module: nn.Module) -> torch.Tensor:
    """sum over the active adapters of scaling * B @ A, in float32."""
    delta = None
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        a = module.lora_A[name].weight.detach().float()
        b = module.lora_B[name].weight.detach().float()
        term = (b @ a) * float(module.scaling[name])
        delta = term if delta is None else delta + term
    return delta if delta is not None else torch.zeros(())


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def merge_to_dense(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """The Hugging Face model of `model` (a peft LoRA model over a quantized or dense base) with every adapter merged.

    Works on `model` in place (its layers are replaced) and returns the un-wrapped base model, cast to `dtype`.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    wrapped = [(n, m) for n, m in base.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    for name, module in wrapped:
        inner = module.base_layer
        if isinstance(inner, QuantLinear):
            weight, bias = inner.dequantize(torch.float32), inner.bias
        elif isinstance(inner, nn.Linear):
            weight, bias = inner.weight.detach().float(), inner.bias
        else:
            raise TypeError(f"cannot merge the LoRA of {name!r}: its base layer is {type(inner).__name__}, not a "
                            "Linear or QuantLinear.")
        weight = weight + _lora_delta(module).to(weight.device)
        _replace(base, name, _dense_linear(weight, None if bias is None else bias.detach().float(), dtype))
    for name, module in list(base.named_modules()):
        if isinstance(module, QuantLinear):
            bias = None if module.bias is None else module.bias.detach().float()
            _replace(base, name, _dense_linear(module.dequantize(torch.float32), bias, dtype))
    base.to(dtype)
    if getattr(base.config, "quantization_config", None) is not None:
        del base.config.quantization_config
    if hasattr(base, "peft_config"):
        del base.peft_config
    return base
