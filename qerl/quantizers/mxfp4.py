"""MXFP4 (OCP MX v1.0): FP4 E2M1 codes with one power-of-two E8M0 scale per 32 weights (4.25 bits/weight)."""
from __future__ import annotations

from typing import Literal

import torch

from qerl.quantizers.base import QuantizedWeight, Quantizer
from qerl.quantizers.e2m1 import E2M1_MAX, decode_e2m1, encode_e2m1, pack_nibbles, unpack_nibbles
from qerl.registry import QUANTIZERS

E8M0_BIAS = 127


def _floor_log2(x: torch.Tensor) -> torch.Tensor:
    """Exact floor(log2(x)) for positive finite float32 x (via the binary exponent, no log rounding)."""
    _, exponent = torch.frexp(x)
    return exponent.to(torch.int32) - 1


@QUANTIZERS.register()
class MXFP4(Quantizer):
    """OCP MXFP4: E2M1 codes, E8M0 power-of-two scale per 32 weights (4.25 bits/weight).

    rounding="floor" (the spec): X = 2^(floor(log2(amax)) - 2), codes clamp(rne(x/X), +-6) - values between 6X
    and 8X clip. rounding="ceil": X = amax/6 rounded up to a power of two - never clips, same storage
    (torch's `to_mxfp` RCEIL rule). Buffers: `codes` uint8 (out, in/2), `scales` uint8 (out, in/32) holding the
    biased exponent e; value = e2m1(code) * 2^(e - 127).
    """

    format = "mxfp4"
    block_size = 32
    uses_qerl_kernels = True

    def __init__(self, rounding: Literal["floor", "ceil"] = "floor") -> None:
        if rounding not in ("floor", "ceil"):
            raise ValueError(f"MXFP4(rounding={rounding!r}): use 'floor' (OCP spec, may clip) or 'ceil' (never clips).")
        self.rounding = rounding

    def block_exponent(self, block_amax: torch.Tensor) -> torch.Tensor:
        """Unbiased int32 scale exponent per block (0-amax blocks get the smallest scale)."""
        safe = torch.where(block_amax > 0, block_amax, torch.ones_like(block_amax))
        if self.rounding == "floor":
            exp = _floor_log2(safe) - 2
        else:
            exp = _floor_log2(safe / E2M1_MAX)
            exp = exp + (safe > E2M1_MAX * torch.exp2(exp.float())).to(torch.int32)  # round up unless exact
        exp = exp.clamp(-E8M0_BIAS, E8M0_BIAS)
        return torch.where(block_amax > 0, exp, torch.full_like(exp, -E8M0_BIAS))

    def quantize(self, weight: torch.Tensor, name: str = "weight") -> QuantizedWeight:
        w = self.check_weight(weight, name)

        def rows(chunk: torch.Tensor) -> dict[str, torch.Tensor]:
            blocks = chunk.reshape(chunk.shape[0], -1, self.block_size)
            exp = self.block_exponent(blocks.abs().amax(dim=-1))
            scaled = torch.ldexp(blocks, -exp[..., None].float())  # exact division by a power of two
            codes = encode_e2m1(scaled).reshape(chunk.shape)
            return {"codes": pack_nibbles(codes), "scales": (exp + E8M0_BIAS).to(torch.uint8)}

        return QuantizedWeight(type(self), tuple(w.shape), self.by_row_chunks(rows, w))

    @classmethod
    def dequantize_tensors(cls, tensors: dict[str, torch.Tensor], shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        values = decode_e2m1(unpack_nibbles(tensors["codes"])).reshape(shape[0], -1, cls.block_size)
        exp = tensors["scales"].to(torch.int32) - E8M0_BIAS
        return torch.ldexp(values, exp[..., None].float()).reshape(shape).to(dtype)
