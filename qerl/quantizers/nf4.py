"""NF4 (QLoRA): a 16-level NormalFloat codebook scaled by the absmax of each 64-weight block; optional double quant."""
from __future__ import annotations

import torch

from qerl.quantizers.base import QuantizedWeight, Quantizer
from qerl.quantizers.e2m1 import pack_nibbles, unpack_nibbles
from qerl.registry import QUANTIZERS

NF4_CODEBOOK = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
ZERO_CODE = 7  # NF4_CODEBOOK[7] == 0.0
SECOND_LEVEL_BLOCK = 256  # first-level absmax values per second-level (double quant) block


def nf4_codebook(device: torch.device | str | None = None) -> torch.Tensor:
    return torch.tensor(NF4_CODEBOOK, dtype=torch.float32, device=device)


def encode_nf4(x: torch.Tensor) -> torch.Tensor:
    """Values in [-1, 1] -> index of the nearest codebook entry (a tie at a midpoint goes to the lower index)."""
    book = nf4_codebook(x.device)
    return torch.bucketize(x.contiguous(), (book[1:] + book[:-1]) / 2).to(torch.uint8)


@QUANTIZERS.register()
class NF4(Quantizer):
    """QLoRA NormalFloat4: codebook index per weight, absmax per 64 weights (4.5 bits; ~4.127 with double quant).

    value = codebook[code] * absmax(block). Buffers: `codes` uint8 (out, in/2), `scales` float32 (out, in/64).
    double_quant=True stores the absmax values as uint8 instead: offset = mean(absmax) (`scales_offset`, 0-d),
    and per 256 consecutive absmax values (row-major over (out, in/64)) a float32 step
    `scales_scale` = max|absmax - offset| / 127; code = round((absmax - offset) / step) + 128, so
    absmax = (code - 128) * step + offset. The codes then index the codebook against the decoded absmax.
    """

    format = "nf4"
    block_size = 64
    uses_qerl_kernels = True

    def __init__(self, double_quant: bool = False) -> None:
        self.double_quant = double_quant

    def quantize(self, weight: torch.Tensor, name: str = "weight") -> QuantizedWeight:
        w = self.check_weight(weight, name)
        absmax = w.reshape(w.shape[0], -1, self.block_size).abs().amax(dim=-1)
        tensors: dict[str, torch.Tensor] = {"scales": absmax}
        if self.double_quant:
            tensors = quantize_absmax(absmax)
            absmax = dequantize_absmax(tensors, absmax.shape)

        def rows(chunk: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
            blocks = chunk.reshape(chunk.shape[0], -1, self.block_size)
            positive = (scale > 0)[..., None]
            codes = encode_nf4((blocks / torch.where(positive, scale[..., None], 1.0)).clamp(-1.0, 1.0))
            codes = torch.where(positive, codes, ZERO_CODE)  # a block whose scale is 0 stores zeros
            return {"codes": pack_nibbles(codes.reshape(chunk.shape))}

        tensors = {**self.by_row_chunks(rows, w, absmax), **tensors}
        return QuantizedWeight(type(self), tuple(w.shape), tensors)

    @classmethod
    def block_scales(cls, tensors: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
        """float32 absmax per block (out, in/64), decoding double quant when present."""
        if "scales_scale" in tensors:
            return dequantize_absmax(tensors, (shape[0], shape[1] // cls.block_size))
        return tensors["scales"].float()

    @classmethod
    def dequantize_tensors(cls, tensors: dict[str, torch.Tensor], shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        codes = unpack_nibbles(tensors["codes"])
        values = nf4_codebook(codes.device)[codes.long()].reshape(shape[0], -1, cls.block_size)
        return (values * cls.block_scales(tensors, shape)[..., None]).reshape(shape).to(dtype)


def quantize_absmax(absmax: torch.Tensor) -> dict[str, torch.Tensor]:
    """Second-level quantization of the first-level absmax values (see NF4's docstring)."""
    flat = absmax.reshape(-1)
    offset = flat.mean()
    centered = flat - offset
    pad = (-flat.numel()) % SECOND_LEVEL_BLOCK
    groups = torch.nn.functional.pad(centered, (0, pad)).reshape(-1, SECOND_LEVEL_BLOCK)
    step = groups.abs().amax(dim=1) / 127.0
    safe = torch.where(step > 0, step, torch.ones_like(step))
    codes = (torch.round(groups / safe[:, None]).clamp(-127, 127) + 128).to(torch.uint8)
    return {"scales": codes.reshape(-1)[: flat.numel()].reshape(absmax.shape).clone(),  # own storage, no padding
            "scales_scale": step.float(), "scales_offset": offset.float()}


def dequantize_absmax(tensors: dict[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of `quantize_absmax`: float32 absmax of shape (out, in/64)."""
    codes = tensors["scales"].reshape(-1).float() - 128.0
    step = tensors["scales_scale"].float().repeat_interleave(SECOND_LEVEL_BLOCK)[: codes.numel()]
    return (codes * step + tensors["scales_offset"].float()).reshape(shape)
