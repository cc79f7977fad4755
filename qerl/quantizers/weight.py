"""A quantized weight (`QuantizedWeight`), the `StorageFormat` classes that read formats back, and the error.

Below both `Quantizer` (base.py, a `StorageFormat`) and `QuantLinear` (layers.py): a layer reads its weight back
through `format_codec(format)` without importing the quantizer base class. The formats are found in the class
tree itself - every class that declares `format` owns it - so there is no second table beside `QUANTIZERS`.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch


class QuantizationError(ValueError):
    """A weight cannot be quantized (shape, NaN/Inf); the message names the layer."""


class StorageFormat:
    """A stored 4-bit format: its name, block size and how its tensors read back (`Quantizer` is one)."""

    format: ClassVar[str] = ""
    block_size: int = 0  # weights per block along in_features (a subclass may make it an __init__ argument)
    uses_qerl_kernels: ClassVar[bool] = False  # True: QuantLinear may call qerl.kernels.quant_linear on CUDA

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("format"):
            return  # declares no format (a subclass that keeps its parent's format reads it the same way)
        owner = _owner(cls.format)
        if owner is not cls and owner.__qualname__ != cls.__qualname__:
            raise TypeError(f"{cls.__module__}.{cls.__qualname__} claims storage format {cls.format!r}, already owned "
                            f"by {owner.__module__}.{owner.__qualname__}; pick a new format name.")

    @classmethod
    def dequantize_tensors(cls, tensors: dict[str, torch.Tensor], shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """Stored tensors of this format -> the (out, in) weight in `dtype` (block size follows from the shapes)."""
        raise NotImplementedError(f"{cls.__qualname__} does not read format {cls.format!r} back.")


def _declaring(root: type = StorageFormat) -> Iterator[type]:
    """Every class below `root` that declares its own `format`, in definition order (parents first)."""
    for sub in root.__subclasses__():
        if sub.__dict__.get("format"):
            yield sub
        yield from _declaring(sub)


def _owner(name: str) -> type | None:
    return next((cls for cls in _declaring() if cls.format == name), None)


class QuantizedWeight:
    """A quantized (out_features, in_features) weight: its stored tensors and how to read them back."""

    def __init__(self, codec: type[StorageFormat], shape: tuple[int, int], tensors: dict[str, torch.Tensor],
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


def format_codec(name: str) -> type[StorageFormat]:
    """The quantizer class that owns storage format `name` ("nvfp4", "mxfp4", "nf4", plugin formats)."""
    owner = _owner(name)
    if owner is None:
        known = sorted({cls.format for cls in _declaring()})
        raise QuantizationError(
            f"Unknown quantized storage format {name!r}. Known formats: {', '.join(known) or '(none)'}. "
            "If it comes from a plugin, install the plugin (see `qerl list quantizers`)."
        )
    return owner
