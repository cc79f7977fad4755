"""INT4: group-wise asymmetric 4-bit integer weights (min/max per group), stored like GPTQ/AWQ checkpoints."""
from __future__ import annotations

import torch

from qerl.quantizers import QuantizedWeight, Quantizer
from qerl.quantizers.e2m1 import pack_nibbles, unpack_nibbles
from qerl.registry import QUANTIZERS

LEVELS = 15  # codes 0..15


@QUANTIZERS.register()
class INT4(Quantizer):
    """Group-wise asymmetric INT4 (fp16 scale + 4-bit zero point per group of 128; ~4.19 bits/weight).

    Per group: scale = (max - min) / 15, zero = clamp(round(-min / scale), 0, 15),
    code = clamp(round(x / scale) + zero, 0, 15), value = (code - zero) * scale. The range always includes 0,
    so zeros stay exact. Buffers: `codes` uint8 (out, in/2, even column in the low nibble), `scales` float16
    (out, in/group), `zeros` uint8 (out, in/group).
    """

    format = "int4"
    block_size = 128
    uses_qerl_kernels = False  # qerl's kernels know nvfp4/mxfp4/nf4 only: the reference path runs everywhere

    def __init__(self, group_size: int = 128) -> None:
        if group_size <= 0 or group_size % 2:
            raise ValueError(f"INT4(group_size={group_size}): use a positive even group size (e.g. 32, 64, 128).")
        self.block_size = group_size

    def quantize(self, weight: torch.Tensor, name: str = "weight") -> QuantizedWeight:
        w = self.check_weight(weight, name)

        def rows(chunk: torch.Tensor) -> dict[str, torch.Tensor]:
            groups = chunk.reshape(chunk.shape[0], -1, self.block_size)
            low = groups.amin(dim=-1).clamp(max=0.0)
            high = groups.amax(dim=-1).clamp(min=0.0)
            scale = ((high - low) / LEVELS).to(torch.float16)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group
            step = scale.float()[..., None]
            zero = torch.round(-low[..., None] / step).clamp(0, LEVELS)
            codes = (torch.round(groups / step) + zero).clamp(0, LEVELS).to(torch.uint8)
            return {"codes": pack_nibbles(codes.reshape(chunk.shape)), "scales": scale,
                    "zeros": zero[..., 0].to(torch.uint8)}

        return QuantizedWeight(type(self), tuple(w.shape), self.by_row_chunks(rows, w), self.block_size)

    @classmethod
    def dequantize_tensors(cls, tensors: dict[str, torch.Tensor], shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        groups = tensors["scales"].shape[-1]
        codes = unpack_nibbles(tensors["codes"]).float().reshape(shape[0], groups, -1)
        values = (codes - tensors["zeros"].float()[..., None]) * tensors["scales"].float()[..., None]
        return values.reshape(shape).to(dtype)
