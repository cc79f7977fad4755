"""NVFP4: FP4 E2M1 codes, an FP8 E4M3 scale per 16 weights and one FP32 scale per tensor (4.5 bits/weight)."""
from __future__ import annotations

import torch

from qerl.quantizers.base import QuantizedWeight, Quantizer
from qerl.quantizers.e2m1 import E2M1_MAX, decode_e2m1, encode_e2m1, pack_nibbles, unpack_nibbles
from qerl.registry import QUANTIZERS

E4M3_MAX = 448.0


@QUANTIZERS.register()
class NVFP4(Quantizer):
    """NVIDIA FP4: E2M1 codes, E4M3 scale per 16 weights, FP32 tensor scale (4.5 bits/weight).

    global = amax(W) / (6*448); s = e4m3(amax(block) / 6 / global); code = e2m1_rne(x / (s*global));
    value = e2m1(code) * s * global. A block whose scale rounds to zero in E4M3 stores zeros.
    Buffers: `codes` uint8 (out, in/2), `scales` float8_e4m3fn (out, in/16), `global_scale` float32 0-d.
    """

    format = "nvfp4"
    block_size = 16
    uses_qerl_kernels = True
    shares_tensor_scale = True

    def quantize(self, weight: torch.Tensor, name: str = "weight",
                 tensor_amax: torch.Tensor | None = None) -> QuantizedWeight:
        """`tensor_amax`: the amax the tensor scale is set from (the largest |weight| of a fused group, see
        `qerl.quantizers.fused`); at least the weight's own amax."""
        w = self.check_weight(weight, name)
        amax = w.abs().amax()
        if tensor_amax is not None:
            amax = torch.maximum(amax, tensor_amax.to(device=amax.device, dtype=amax.dtype))
        global_scale = torch.where(amax > 0, amax / (E2M1_MAX * E4M3_MAX), torch.ones_like(amax))

        def rows(chunk: torch.Tensor) -> dict[str, torch.Tensor]:
            blocks = chunk.reshape(chunk.shape[0], -1, self.block_size)
            block_amax = blocks.abs().amax(dim=-1)
            scales = (block_amax / E2M1_MAX / global_scale).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
            denom = scales.float() * global_scale
            scaled = torch.where(denom[..., None] > 0, blocks / denom[..., None], torch.zeros_like(blocks))
            codes = encode_e2m1(scaled).reshape(chunk.shape)
            return {"codes": pack_nibbles(codes), "scales": scales}

        tensors = self.by_row_chunks(rows, w)
        tensors["global_scale"] = global_scale.to(torch.float32)
        return QuantizedWeight(type(self), tuple(w.shape), tensors)

    @classmethod
    def dequantize_tensors(cls, tensors: dict[str, torch.Tensor], shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        values = decode_e2m1(unpack_nibbles(tensors["codes"])).reshape(shape[0], -1, cls.block_size)
        scale = tensors["scales"].float() * tensors["global_scale"].float()
        return (values * scale[..., None]).reshape(shape).to(dtype)
