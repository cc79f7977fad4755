"""`QuantLinear`: a frozen 4-bit Linear (W4A16) holding the packed weight as buffers."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from qerl.quantizers.weight import QuantizationError, QuantizedWeight, format_codec


@functools.cache
def _kernel_quant_linear():
    """`qerl.kernels.quant_linear` when the kernels exist and say they are available, else None (asked once)."""
    try:
        from qerl.kernels import available, quant_linear
    except (ImportError, AttributeError):
        return None
    return quant_linear if available() else None


class _DequantLinear(torch.autograd.Function):
    """y = x @ W_deq^T + b; grad_x = grad @ W_deq (re-dequantized, not saved); the base gets no gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantize(x.dtype), None if layer.bias is None else layer.bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        return grad @ ctx.layer.dequantize(grad.dtype), None


class QuantLinear(nn.Module):
    """A Linear whose weight is stored in a 4-bit format; frozen, with an exact input gradient.

    Buffers: `codes`, `scales` and the format's extra tensors (`global_scale` for NVFP4; `scales_scale` and
    `scales_offset` for NF4 with double quant), plus an optional bf16 `bias`. Attributes: `format`,
    `block_size`, `in_features`, `out_features`. On CUDA, formats whose quantizer sets `uses_qerl_kernels`
    run `qerl.kernels.quant_linear` when `qerl.kernels.available()`; everywhere else the reference path
    (dequantize, then F.linear) runs.
    """

    def __init__(self, in_features: int, out_features: int, format: str, tensors: dict[str, torch.Tensor],
                 bias: torch.Tensor | None = None, name: str = "QuantLinear", block_size: int | None = None) -> None:
        super().__init__()
        codec = format_codec(format)
        block_size = block_size or codec.block_size
        if in_features % block_size:
            raise QuantizationError(
                f"QuantLinear {name!r}: in_features={in_features} (shape ({out_features}, {in_features})) is not a "
                f"multiple of the {format} block size {block_size}; keep this layer in bf16 (skip it).")
        self.in_features, self.out_features = in_features, out_features
        self.format, self.block_size = format, block_size
        self._codec = codec
        self._names = tuple(tensors)
        for key, value in tensors.items():
            self.register_buffer(key, value)
        self.register_buffer("bias", bias)
        self._dense: dict[torch.dtype, torch.Tensor] | None = None  # dense copies while `keep_dense(True)`

    @classmethod
    def from_quantized(cls, qweight: QuantizedWeight, bias: torch.Tensor | None = None,
                       name: str = "QuantLinear") -> QuantLinear:
        out_f, in_f = qweight.shape
        return cls(in_f, out_f, qweight.format, dict(qweight.tensors), bias=bias, name=name, block_size=qweight.block_size)

    def _apply(self, fn, recurse: bool = True):
        """Device moves apply to every buffer; dtype casts (`model.to(torch.bfloat16)`, `.half()`, Lightning's
        precision plugins) skip the stored format, which would otherwise be silently corrupted."""
        before = self.quantized_tensors()
        super()._apply(fn, recurse)
        for key, old in before.items():
            new = self._buffers[key]
            if new is not None and new.dtype != old.dtype:
                self._buffers[key] = old.to(new.device)
        return self

    # ------------------------------------------------------------------ weight views
    def quantized_tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by buffer name (no bias)."""
        return {k: getattr(self, k) for k in self._names}

    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(self._codec, (self.out_features, self.in_features), self.quantized_tensors(),
                               self.block_size)

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """The (out_features, in_features) weight this layer multiplies by."""
        if self._dense is not None and dtype in self._dense:
            return self._dense[dtype]
        weight = self._codec.dequantize_tensors(self.quantized_tensors(), torch.Size((self.out_features, self.in_features)),
                                                dtype)
        if self._dense is not None:
            self._dense[dtype] = weight
        return weight

    def keep_dense(self, enabled: bool) -> None:
        """While enabled, keep the dequantized weight after its first use (per dtype); disabling frees the copies."""
        self._dense = {} if enabled else None

    def block_scales(self) -> torch.Tensor:
        """float32 scale per block (NF4: absmax, double quant decoded); the stored scales for other formats."""
        if hasattr(self._codec, "block_scales"):
            return self._codec.block_scales(self.quantized_tensors(), torch.Size((self.out_features, self.in_features)))
        return self.scales.float()

    @property
    def nbytes(self) -> int:
        """Bytes of the quantized weight (codes and scales, without bias)."""
        return self.quantized_weight().nbytes

    @property
    def qweight(self) -> torch.Tensor:
        """The packed codes; peft reads a quantized layer's device from `qweight` (as for GPTQ layers)."""
        return self.codes

    # ------------------------------------------------------------------ forward
    @property
    def uses_kernels(self) -> bool:
        """Whether this format runs `qerl.kernels` on CUDA (its quantizer sets `uses_qerl_kernels`)."""
        return bool(self._codec.uses_qerl_kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and self.uses_kernels:
            kernel = _kernel_quant_linear()
            if kernel is not None:
                return kernel(x, self)
        return _DequantLinear.apply(x, self)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}, "
                f"block_size={self.block_size}, bias={self.bias is not None}")
