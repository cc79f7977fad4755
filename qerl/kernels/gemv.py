"""Fused dequantize + GEMV for the smallest M (decode with 1-4 rows): no tensor cores, no shared memory.

Each program owns BLOCK_N weight rows and one split of K; every thread dequantizes its own bytes in
registers and multiplies them straight into per-thread float32 partial sums (one FMA per weight and
row of x), reduced once after the loop. Nothing is reshaped into a matrix-unit layout, so there is no
shared-memory round trip per iteration (what the tensor-core kernel in ``fused.py`` pays).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from qerl.kernels.formats import block_multiplier, dequant_pair


@triton.jit
def _gemv_kernel(
    x_ptr, codes_ptr, scales_ptr, g_ptr, bias_ptr, out_ptr,
    M, N, K,
    sxm, sc_n, ss_n, som,
    FMT: tl.constexpr, B: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr, ASM: tl.constexpr,
    EVEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr, SPLIT_K: tl.constexpr,
):
    GPS: tl.constexpr = B // 16
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    KG = K // 16
    iters = tl.cdiv(KG, NG)
    per_split = tl.cdiv(iters, SPLIT_K)
    it0 = pid_k * per_split
    it1 = tl.minimum(it0 + per_split, iters)

    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rg = tl.arange(0, NG)
    rj = tl.arange(0, 8)
    n_ok = rn < N
    g = 1.0
    if FMT == 0:
        g = tl.load(g_ptr)
    c_ptrs = codes_ptr + rn[:, None, None] * sc_n + rg[None, :, None] * 8 + rj[None, None, :]
    xcol = rg[:, None] * 16 + 2 * rj[None, :]  # (NG, 8): x column of each even code

    acc0 = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
    for it in range(it0, it1):
        kg = it * NG
        s_ptrs = scales_ptr + rn[:, None] * ss_n + ((kg + rg) // GPS)[None, :]
        g_ok = (kg + rg) < KG
        if EVEN:
            byt = tl.load(c_ptrs + kg * 8)
            s = tl.load(s_ptrs)
        else:
            byt = tl.load(c_ptrs + kg * 8, mask=n_ok[:, None, None] & g_ok[None, :, None], other=0)
            s = tl.load(s_ptrs, mask=n_ok[:, None] & g_ok[None, :], other=0)
        # codes times 2**-14 (or the bare NF4 value); the block scale is applied once per group below
        lo, hi = dequant_pair(byt, 1.0, FMT, ASM)
        mult = block_multiplier(s, g, FMT)
        xp = x_ptr + kg * 16 + xcol
        xm = g_ok[:, None] & (rj < 8)[None, :]
        one = tl.full((NG, 8), 1, tl.int32)
        xe = tl.load(xp, mask=xm, other=0.0).to(tl.float32)
        xo = tl.load(xp + 1, mask=xm, other=0.0).to(tl.float32)
        acc0 += tl.sum(lo * xe[None] + hi * xo[None], axis=2) * mult
        if BLOCK_M > 1:
            xe = tl.load(xp + sxm, mask=xm & (one < M), other=0.0).to(tl.float32)
            xo = tl.load(xp + sxm + 1, mask=xm & (one < M), other=0.0).to(tl.float32)
            acc1 += tl.sum(lo * xe[None] + hi * xo[None], axis=2) * mult
        if BLOCK_M > 2:
            xe = tl.load(xp + 2 * sxm, mask=xm & (one * 2 < M), other=0.0).to(tl.float32)
            xo = tl.load(xp + 2 * sxm + 1, mask=xm & (one * 2 < M), other=0.0).to(tl.float32)
            acc2 += tl.sum(lo * xe[None] + hi * xo[None], axis=2) * mult
            xe = tl.load(xp + 3 * sxm, mask=xm & (one * 3 < M), other=0.0).to(tl.float32)
            xo = tl.load(xp + 3 * sxm + 1, mask=xm & (one * 3 < M), other=0.0).to(tl.float32)
            acc3 += tl.sum(lo * xe[None] + hi * xo[None], axis=2) * mult

    bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    for m in tl.static_range(BLOCK_M):
        if m == 0:
            y = tl.sum(acc0, axis=1)
        elif m == 1:
            y = tl.sum(acc1, axis=1)
        elif m == 2:
            y = tl.sum(acc2, axis=1)
        else:
            y = tl.sum(acc3, axis=1)
        if m < M:
            if ATOMIC:
                tl.atomic_add(out_ptr + m * som + rn, y, mask=n_ok)
            else:
                tl.store(out_ptr + m * som + rn, (y + bias).to(out_ptr.dtype.element_ty), mask=n_ok)


GEMV_MAX_M = 4
# measured on H100 at M=1 (benchmarks/results/kernels-notes.md); the 128-row tile spills at M=4
DEFAULT_CONFIGS = {
    0: {"BLOCK_N": 128, "NG": 8, "num_warps": 4, "num_stages": 3},
    1: {"BLOCK_N": 128, "NG": 8, "num_warps": 4, "num_stages": 3},
    2: {"BLOCK_N": 64, "NG": 4, "num_warps": 4, "num_stages": 3},
}


def gemv_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, gscale, fmt_id: int, block: int,
                bias, config: dict | None = None) -> torch.Tensor:
    """``x`` (M <= 4, K) -> (M, N) in x's dtype; x must be contiguous along K."""
    m, k = x.shape
    n = codes.shape[0]
    if m > GEMV_MAX_M:
        raise ValueError(f"gemv_linear handles at most {GEMV_MAX_M} rows, got x of shape {tuple(x.shape)}")
    cfg = dict(DEFAULT_CONFIGS[fmt_id]) if config is None else dict(config)
    block_m = 1 if m == 1 else (2 if m == 2 else 4)
    if block_m > 1 and config is None:
        cfg.update(BLOCK_N=64, NG=4)
    split = cfg.pop("SPLIT_K", None)
    if split is None:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 8
        tiles, iters, split = triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(k // 16, cfg["NG"]), 1
        while tiles * split < 4 * sms and split * 2 <= iters // 8:
            split *= 2
    atomic = split > 1
    out = torch.zeros((m, n), device=x.device, dtype=torch.float32) if atomic else torch.empty(
        (m, n), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), split)
    _gemv_kernel[grid](
        x, codes, scales, gscale if gscale is not None else scales, bias if bias is not None else out, out,
        m, n, k, x.stride(0), codes.stride(0), scales.stride(0), out.stride(0),
        FMT=fmt_id, B=block, HAS_BIAS=bias is not None and not atomic, ATOMIC=atomic, ASM=x.is_cuda,
        EVEN=n % cfg["BLOCK_N"] == 0 and (k // 16) % cfg["NG"] == 0, BLOCK_M=block_m, SPLIT_K=split, **cfg,
    )
    if atomic:
        out = out.to(x.dtype) if bias is None else (out + bias.to(torch.float32)).to(x.dtype)
    return out
