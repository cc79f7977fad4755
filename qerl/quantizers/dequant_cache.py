"""Dequantize each frozen 4-bit layer once per training step instead of at every forward (a CPU speed-up)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from qerl.quantizers.layers import QuantLinear


@contextlib.contextmanager
def dequantize_once(model: nn.Module) -> Iterator[int]:
    """Within the block every `QuantLinear` keeps its dequantized weight after the first use (per dtype).

    The base is frozen and AQN noise lives in the norms, so the weight cannot change inside a step;
    this trades the memory of a dense copy of the quantized layers for not decoding them at every
    forward and backward (decoding dominates generation on a CPU). Yields how many layers are cached.
    On exit the layers decode on demand again and the copies are freed.
    """
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    for layer in layers:
        layer.keep_dense(True)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.keep_dense(False)
