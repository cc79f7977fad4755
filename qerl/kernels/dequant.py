"""Dequantize packed 4-bit weights into a (reused) bf16/fp16 buffer, for the large-M path.

For training-sized M the matrix product is compute-bound and cuBLAS wins; the cost of the 4-bit
weight is then one pass that reads 4.5 bits and writes 16 bits per weight. One buffer per
(device, dtype) is kept and grown to the largest layer seen, so a model dequantizes layer after
layer into the same memory instead of allocating a bf16 copy of each weight.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from qerl.kernels.formats import block_multiplier, dequant_pair

_BUFFERS: dict[tuple, torch.Tensor] = {}


@triton.jit
def _dequant_kernel(
    codes_ptr, scales_ptr, g_ptr, out_ptr, N, K, sc_n, ss_n, so_n,
    FMT: tl.constexpr, B: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr, ASM: tl.constexpr,
):
    GPS: tl.constexpr = B // 16
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    kg = tl.program_id(1) * NG
    rg = tl.arange(0, NG)
    rj = tl.arange(0, 8)
    KG = K // 16
    n_ok = rn < N
    g_ok = (kg + rg) < KG
    g = 1.0
    if FMT == 0:
        g = tl.load(g_ptr)
    byt = tl.load(codes_ptr + rn[:, None, None] * sc_n + (kg + rg)[None, :, None] * 8 + rj[None, None, :],
                  mask=n_ok[:, None, None] & g_ok[None, :, None], other=0)
    s = tl.load(scales_ptr + rn[:, None] * ss_n + ((kg + rg) // GPS)[None, :], mask=n_ok[:, None] & g_ok[None, :],
                other=0)
    lo, hi = dequant_pair(byt, block_multiplier(s, g, FMT)[:, :, None], FMT, ASM)
    w = tl.reshape(tl.join(lo, hi), (BLOCK_N, NG * 16)).to(out_ptr.dtype.element_ty)
    col = kg * 16 + tl.arange(0, NG * 16)
    tl.store(out_ptr + rn[:, None] * so_n + col[None, :], w, mask=n_ok[:, None] & (col < K)[None, :])


def dequantize_into(codes: torch.Tensor, scales: torch.Tensor, gscale, fmt_id: int, block: int,
                    in_features: int, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """Dequantize to an (N, K) tensor of ``dtype``; into the shared buffer unless ``out`` is given."""
    n, k = codes.shape[0], in_features
    if out is None:
        key = (codes.device, dtype)
        buf = _BUFFERS.get(key)
        if buf is None or buf.numel() < n * k:
            _BUFFERS.pop(key, None)
            buf = torch.empty(n * k, device=codes.device, dtype=dtype)
            _BUFFERS[key] = buf
        out = buf[: n * k].view(n, k)
    ng, block_n = 16, 16
    grid = (triton.cdiv(n, block_n), triton.cdiv(k // 16, ng))
    g = gscale if gscale is not None else scales
    _dequant_kernel[grid](codes, scales, g, out, n, k, codes.stride(0), scales.stride(0), out.stride(0),
                          FMT=fmt_id, B=block, BLOCK_N=block_n, NG=ng, ASM=codes.is_cuda, num_warps=4)
    return out


def release_buffers() -> None:
    """Free the shared dequantization buffers (e.g. before a memory-hungry phase)."""
    _BUFFERS.clear()
