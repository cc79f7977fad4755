"""The quantizer extension point: a `Quantizer` turns a weight into a `QuantizedWeight` and swaps Linear layers.

A concrete quantizer names its storage `format` and `block_size`, quantizes a 2-D weight into named tensors
(the `QuantLinear` buffers: `codes`, `scales`, ...), and reads them back in
`dequantize_tensors`. Every subclass that declares `format` is findable by it (`format_codec("nvfp4")`), which is
how a `QuantLinear` or a checkpoint turns stored tensors back into a weight - including plugin formats.

Bad input is refused, never padded: in_features must be a multiple of `block_size` and the weight finite.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import nn

from qerl.quantizers.fused import shared_amax
from qerl.quantizers.layers import QuantLinear
from qerl.quantizers.weight import QuantizationError, QuantizedWeight, StorageFormat

_ROWS_PER_CHUNK_ELEMENTS = 1 << 26  # bounds the temporaries of one quantize step (~64M weights at a time)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    parts = name.split(".")
    return any(p == name or p in parts or name.endswith("." + p) for p in patterns)


class Quantizer(StorageFormat, ABC):
    """Turns bf16/fp32 weights into a 4-bit format and swaps Linear layers.

    `shares_tensor_scale`: the format has a per-tensor scale (NVFP4); `quantize` then takes `tensor_amax`, and
    `quantize_model` gives the shards an engine fuses (q/k/v, gate/up) the amax of their group, so they share
    one tensor scale as vLLM's fused layers require (`qerl.quantizers.fused`).
    """

    shares_tensor_scale = False

    # ------------------------------------------------------------------ per weight
    @abstractmethod
    def quantize(self, weight: torch.Tensor, name: str = "weight") -> QuantizedWeight:
        """Quantize a 2-D (out_features, in_features) weight on its own device; `name` is used in errors."""

    @classmethod
    @abstractmethod
    def dequantize_tensors(cls, tensors: dict[str, torch.Tensor], shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """Stored tensors of this format -> the (out, in) weight in `dtype` (block size follows from the shapes)."""

    def check_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        """Refuse what the format cannot hold; return the weight as float32 on its device."""
        if weight.dim() != 2:
            raise QuantizationError(f"{type(self).__name__}: layer {name!r} has a {weight.dim()}-D weight "
                                    f"{tuple(weight.shape)}; only 2-D (out_features, in_features) weights are quantized.")
        out_f, in_f = weight.shape
        if in_f % self.block_size:
            raise QuantizationError(
                f"{type(self).__name__}: layer {name!r} has weight shape ({out_f}, {in_f}); in_features={in_f} is not a "
                f"multiple of the block size {self.block_size}. qerl refuses rather than pads: add {name!r} to `skip` "
                "to keep it in bf16, or pick a format with a smaller block.")
        if not torch.isfinite(weight).all():
            bad = (~torch.isfinite(weight)).sum().item()
            raise QuantizationError(f"{type(self).__name__}: layer {name!r} weight {tuple(weight.shape)} holds {bad} "
                                    "NaN/Inf value(s); fix the checkpoint (or skip the layer) before quantizing.")
        return weight.detach().float()

    @staticmethod
    def by_row_chunks(fn: Callable[..., dict[str, torch.Tensor]], *tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        """Apply a vectorized per-row quantize step to bounded chunks of rows and concatenate the results.

        Every tensor in `tensors` has the same number of rows and is split alike; `fn` gets one chunk of each.
        """
        n_rows, n_cols = tensors[0].shape[0], tensors[0].shape[1]
        rows = max(1, _ROWS_PER_CHUNK_ELEMENTS // max(1, n_cols))
        if rows >= n_rows:
            return fn(*tensors)
        parts = [fn(*chunks) for chunks in zip(*(t.split(rows, dim=0) for t in tensors))]
        return {k: torch.cat([p[k] for p in parts], dim=0) for k in parts[0]}

    # ------------------------------------------------------------------ per model
    def quantize_model(self, model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> nn.Module:
        """Swap every targeted nn.Linear for a QuantLinear in place; return the model.

        Targeted: every nn.Linear whose dotted name does not match `skip` (an entry matches the full name, one
        path component, or a suffix). `lm_head` is always kept in bf16, embeddings are not Linear and stay too.
        Each weight is quantized on its own device, one layer at a time; with `shares_tensor_scale`, the shards
        of a fused layer get one tensor scale (`qerl.quantizers.fused`).
        """
        patterns = tuple(dict.fromkeys(("lm_head", *skip)))
        targets = [n for n, m in model.named_modules()
                   if isinstance(m, nn.Linear) and not isinstance(m, QuantLinear) and not _matches(n, patterns)]
        shared = shared_amax(model, targets) if self.shares_tensor_scale else {}
        for name in targets:  # names only, so each bf16 weight is freed as soon as its layer is swapped
            linear = model.get_submodule(name)
            extra = {"tensor_amax": shared[name]} if name in shared else {}
            qweight = self.quantize(linear.weight.data, name=name, **extra)
            bias = None if linear.bias is None else linear.bias.data.to(torch.bfloat16)
            layer = QuantLinear.from_quantized(qweight, bias=bias, name=name)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
            del linear, qweight
        return model
