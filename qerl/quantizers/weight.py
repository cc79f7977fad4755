"""A quantized weight (`QuantizedWeight`), the storage-format table, and the error quantizers raise.

Below both `Quantizer` (base.py) and `QuantLinear` (layers.py): a layer reads its weight back through
`format_codec(format)` without importing the quantizer base class.
"""
from __future__ import annotations

import torch

#: storage format name -> the Quantizer class that reads it (filled by `Quantizer.__init_subclass__`)
FORMATS: dict[str, type] = {}


class QuantizationError(ValueError):
    """A weight cannot be quantized (shape, NaN/Inf); the message names the layer."""


class QuantizedWeight:
    """A quantized (out_features, in_features) weight: its stored tensors and how to read them back."""

    def __init__(self, codec: type, shape: tuple[int, int], tensors: dict[str, torch.Tensor],
                 block_size: int | None = None) -> None:
        self.codec = codec
        self.shape = torch.Size(shape)
        self.tensors = tensors
        self.block_size = block_size or codec.block_size  # per instance for formats with a configurable group

    @property
    def format(self) -> str:
        return self.codec.format

    @property
    def nbytes(self) -> int:
        """Every stored byte: codes, scales, second-level scales."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / self.shape.numel()

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """The weight the format represents, shape (out_features, in_features)."""
        return self.codec.dequantize_tensors(self.tensors, self.shape, dtype)

    def to(self, device: torch.device | str) -> QuantizedWeight:
        return QuantizedWeight(self.codec, tuple(self.shape), {k: v.to(device) for k, v in self.tensors.items()},
                               self.block_size)

    def __repr__(self) -> str:
        return f"QuantizedWeight({self.format}, shape={tuple(self.shape)}, {self.bits_per_weight:.3f} bits/weight)"


def format_codec(name: str) -> type:
    """The quantizer class that owns storage format `name` ("nvfp4", "mxfp4", "nf4", plugin formats)."""
    if name not in FORMATS:
        raise QuantizationError(
            f"Unknown quantized storage format {name!r}. Known formats: {', '.join(sorted(FORMATS)) or '(none)'}. "
            "If it comes from a plugin, install the plugin (see `qerl list quantizers`)."
        )
    return FORMATS[name]
