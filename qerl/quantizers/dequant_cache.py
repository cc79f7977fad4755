"""Dequantize each frozen 4-bit layer once per training step instead of at every forward (a CPU speed-up)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def dequantize_once(model: nn.Module) -> Iterator[int]:
    """Within the block every `QuantLinear` keeps its dequantized weight after the first use (per dtype).

    The base is frozen and AQN noise lives in the norms, so the weight cannot change inside a step;
    this trades the memory of a dense copy of the quantized layers for not decoding them at every
    forward and backward (decoding dominates generation on a CPU). Yields how many layers are cached.
    On exit the layers decode on demand again and the copies are freed.
    """
    from qerl.quantizers.layers import QuantLinear

    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    for layer in layers:
        store: dict[torch.dtype, torch.Tensor] = {}
        decode = type(layer).dequantize

        def cached(dtype: torch.dtype = torch.bfloat16, _layer=layer, _store=store, _decode=decode) -> torch.Tensor:
            if dtype not in _store:
                _store[dtype] = _decode(_layer, dtype)
            return _store[dtype]

        object.__setattr__(layer, "dequantize", cached)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.__dict__.pop("dequantize", None)
