"""Fused dequantize + GEMM for small and medium M: ``y = x @ W.T (+ bias)`` from packed 4-bit W.

Each program owns BLOCK_N output features and one split of K; it reads every packed byte of its
tile once, dequantizes it in registers and multiplies on the tensor cores with the operands
swapped (``y.T = W @ x.T``) so that the weight rows fill the MMA's large dimension and the few
tokens its small one. The next iteration's codes, scales and x columns are loaded before the
current ones are used (v6: Triton does not pipeline loads that reach the dot through the
dequantization; the hand prefetch took 32B gate_up at M=8 from 156 to 120 us on H100).
With SPLIT_K > 1 the last program of each output tile sums the float32 partials (``splitk.py``): one
launch, no zero-fill and no cast kernel (v5 and before: atomic adds into a zeroed float32 buffer, then a cast).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from qerl.kernels.formats import block_multiplier, dequant_pair
from qerl.kernels.splitk import buffers, reduce_tile


@triton.jit
def _load_iter(x_ptr, codes_ptr, scales_ptr, it, rn, rm, n_ok, m_ok, KG, K, sxm, sxk, sc_n, ss_n,
               GPS: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, NG: tl.constexpr):
    """Bytes (BLOCK_N, NG, 8), scales (BLOCK_N, NG) and the even / odd x columns (NG*8, BLOCK_M) of iteration ``it``."""
    kg = it * NG
    rg = tl.arange(0, NG)
    rj = tl.arange(0, 8)
    c_ptrs = codes_ptr + rn[:, None, None] * sc_n + (kg + rg)[None, :, None] * 8 + rj[None, None, :]
    s_ptrs = scales_ptr + rn[:, None] * ss_n + ((kg + rg) // GPS)[None, :]
    if EVEN_N and EVEN_K:
        byt = tl.load(c_ptrs, eviction_policy="evict_first")
        s = tl.load(s_ptrs, eviction_policy="evict_first")
    else:
        byt = tl.load(c_ptrs, mask=n_ok[:, None, None] & ((kg + rg) < KG)[None, :, None], other=0,
                      eviction_policy="evict_first")
        s = tl.load(s_ptrs, mask=n_ok[:, None] & ((kg + rg) < KG)[None, :], other=0, eviction_policy="evict_first")
    col = tl.reshape(rg[:, None] * 16 + 2 * tl.arange(0, 8)[None, :], (NG * 8,))  # x column of each even code
    kcol = kg * 16 + col
    xmask = m_ok[None, :] & (kcol < K)[:, None]
    xp = x_ptr + rm[None, :] * sxm + kcol[:, None] * sxk
    xe = tl.load(xp, mask=xmask, other=0.0, eviction_policy="evict_last")
    xo = tl.load(xp + sxk, mask=xmask, other=0.0, eviction_policy="evict_last")
    return byt, s, xe, xo


@triton.jit
def tile_product(x_ptr, codes_ptr, scales_ptr, g, rn, rm, n_ok, m_ok, pid_k, KG, K, sxm, sxk, sc_n, ss_n,
                 FMT: tl.constexpr, B: tl.constexpr, F32DOT: tl.constexpr, EVEN_N: tl.constexpr,
                 EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr,
                 SPLIT_K: tl.constexpr):
    """float32 (BLOCK_N, BLOCK_M) = W[rn, split pid_k of K] @ x[rm, same split].T (``g``: NVFP4 global scale).

    A tile is (BLOCK_N rows, NG groups of 16 weights = 8 bytes); a group's scale is block (16 g) // B. The loop
    loads iteration it+1 before it computes on iteration it (Triton does not pipeline loads that reach the dot
    through the dequantization), so the memory latency overlaps the decode and the MMAs.
    """
    GPS: tl.constexpr = B // 16
    iters = tl.cdiv(KG, NG)
    per_split = tl.cdiv(iters, SPLIT_K)
    it0 = pid_k * per_split
    it1 = tl.minimum(it0 + per_split, iters)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    byt, s, xe, xo = _load_iter(x_ptr, codes_ptr, scales_ptr, tl.minimum(it0, iters - 1), rn, rm, n_ok, m_ok,
                                KG, K, sxm, sxk, sc_n, ss_n, GPS, EVEN_N, EVEN_K, NG)
    for it in range(it0, it1):
        byt_n, s_n, xe_n, xo_n = _load_iter(x_ptr, codes_ptr, scales_ptr, tl.minimum(it + 1, it1 - 1), rn, rm,
                                            n_ok, m_ok, KG, K, sxm, sxk, sc_n, ss_n, GPS, EVEN_N, EVEN_K, NG)
        mult = block_multiplier(s, g, FMT)
        lo, hi = dequant_pair(byt, mult[:, :, None], FMT, not F32DOT)
        lo2 = tl.reshape(lo, (BLOCK_N, NG * 8))
        hi2 = tl.reshape(hi, (BLOCK_N, NG * 8))
        if F32DOT:  # the interpreter's bf16 dot is wrong (triton 3.9); it computes in float32 instead
            xe = xe.to(tl.float32)
            xo = xo.to(tl.float32)
        else:
            lo2 = lo2.to(x_ptr.dtype.element_ty)
            hi2 = hi2.to(x_ptr.dtype.element_ty)
        acc = tl.dot(lo2, xe, acc)
        acc = tl.dot(hi2, xo, acc)
        byt, s, xe, xo = byt_n, s_n, xe_n, xo_n
    return acc


@triton.jit
def write_tile(acc, out_ptr, part_ptr, cnt_ptr, bias_ptr, tile, pid_k, rn, rm, n_end, M, ldp, som, son,
               HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """out[rm, rn] = acc (+ bias[rn]) for rn < n_end; with split K through `splitk.reduce_tile`."""
    if SPLIT_K == 1:
        n_ok = rn < n_end
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptr + rm[None, :] * som + rn[:, None] * son, acc.to(out_ptr.dtype.element_ty),
                 mask=n_ok[:, None] & (rm < M)[None, :])
    else:
        reduce_tile(acc, part_ptr, out_ptr, cnt_ptr, bias_ptr, tile, pid_k, rn, rm, n_end, M, ldp, som, son,
                    HAS_BIAS, SPLIT_K)


@triton.jit
def _fused_kernel(
    x_ptr, codes_ptr, scales_ptr, g_ptr, bias_ptr, out_ptr, part_ptr, cnt_ptr,
    M, N, K,
    sxm, sxk, sc_n, ss_n, som, son,
    FMT: tl.constexpr, B: tl.constexpr, HAS_BIAS: tl.constexpr, F32DOT: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr, SPLIT_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    g = 1.0
    if FMT == 0:
        g = tl.load(g_ptr)
    acc = tile_product(x_ptr, codes_ptr, scales_ptr, g, rn, rm, rn < N, rm < M, pid_k, K // 16, K, sxm, sxk,
                       sc_n, ss_n, FMT, B, F32DOT, EVEN_N, EVEN_K, BLOCK_M, BLOCK_N, NG, SPLIT_K)
    write_tile(acc, out_ptr, part_ptr, cnt_ptr, bias_ptr, pid_m * tl.num_programs(0) + pid_n, pid_k, rn, rm, N, M,
               N, som, son, HAS_BIAS, SPLIT_K)


# Overrides per (format id, M bucket 16 / 64), filled in memory by `benchmarks/kernels.py --tune`. Empty: the
# rule in `pick_config` was measured on H100 for this kernel (2026-11-26, rollout-notes.md / kernels-notes.md v6).
TUNED: dict = {}


def pick_config(m: int, n: int, k: int, fmt_id: int, sms: int) -> dict:
    """Tile sizes and split-K from the problem size (no autotuning: compile once per bucket).

    Measured on H100 (kernels-notes.md, v6): 128-row tiles with 4 groups per iteration everywhere; 4 warps on the
    wide layers (N >= 16384) up to M=32, 8 warps on the narrow ones and at M=64; an 8-column MMA for M <= 8.
    """
    block_m = 8 if m <= 8 else (16 if m <= 16 else (32 if m <= 32 else 64))
    warps = 4 if n >= 16384 and m <= 32 else 8
    base = {"BLOCK_N": 128, "NG": 4, "num_warps": warps, "num_stages": 3}
    base.update(TUNED.get((fmt_id, 16 if m <= 16 else 64), {}))
    tiles = triton.cdiv(n, base["BLOCK_N"]) * triton.cdiv(m, block_m)
    iters = triton.cdiv(k // 16, base["NG"])
    split = 1
    while tiles * split < 2 * sms and split * 2 <= iters // 4:
        split *= 2
    return dict(base, BLOCK_M=block_m, SPLIT_K=split)


def fused_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, gscale, fmt_id: int,
                 block: int, bias, config: dict | None = None) -> torch.Tensor:
    """``x`` (M, K) float16/bfloat16 -> (M, N) in x's dtype."""
    m, k = x.shape
    n = codes.shape[0]
    if config is None:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 8
        config = pick_config(m, n, k, fmt_id, sms)
    cfg = dict(config)
    split = cfg["SPLIT_K"]
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    g = gscale if gscale is not None else scales
    b = bias if bias is not None else out
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), split, triton.cdiv(m, cfg["BLOCK_M"]))
    part, cnt = buffers(out, split, grid[0] * grid[2])
    _fused_kernel[grid](
        x, codes, scales, g, b, out, part, cnt, m, n, k,
        x.stride(0), x.stride(1), codes.stride(0), scales.stride(0), out.stride(0), out.stride(1),
        FMT=fmt_id, B=block, HAS_BIAS=bias is not None, F32DOT=not x.is_cuda,
        EVEN_N=n % cfg["BLOCK_N"] == 0, EVEN_K=(k // 16) % cfg["NG"] == 0, **cfg,
    )
    return out
