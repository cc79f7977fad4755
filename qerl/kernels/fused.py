"""Fused dequantize + GEMM for small and medium M: ``y = x @ W.T (+ bias)`` from packed 4-bit W.

Each program owns BLOCK_N output features and one split of K; it reads every packed byte of its
tile once, dequantizes it in registers and multiplies on the tensor cores with the operands
swapped (``y.T = W @ x.T``) so that the weight rows fill the MMA's large dimension and the few
tokens its small one. The next iteration's codes, scales and x columns are loaded before the
current ones are used (v6: Triton does not pipeline loads that reach the dot through the
dequantization; with the other v6 changes 32B gate_up at M=8 went from 153 to 117 us on H100).
With SPLIT_K > 1 the last program of each output tile sums the float32 partials (``splitk.py``): one
launch, no zero-fill and no cast kernel (v5 and before: atomic adds into a zeroed float32 buffer, then a cast).
One launch can cover up to three weights that share the input (``fused_linear_group``: q|k|v, gate|up).
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
def _tile_product(x_ptr, codes_ptr, scales_ptr, g, rn, rm, n_ok, m_ok, pid_k, KG, K, sxm, sxk, sc_n, ss_n,
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
def _write_tile(acc, out_ptr, part_ptr, cnt_ptr, bias_ptr, tile, pid_k, rn, rm, n_end, M, ldp, som, son,
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
    x_ptr, c0, c1, c2, s0, s1, s2, g0, g1, g2, b0, b1, b2, out_ptr, part_ptr, cnt_ptr,
    M, N0, N1, N2, K,
    sxm, sxk, sc_n, ss_n, som, son,
    FMT: tl.constexpr, B: tl.constexpr, HAS_BIAS: tl.constexpr, F32DOT: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr, SPLIT_K: tl.constexpr,
):
    # up to three weights (segments) share the grid: program pid_n finds its weight from its tile index
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    t0 = tl.cdiv(N0, BLOCK_N)
    t1 = tl.cdiv(N1, BLOCK_N)
    if pid_n < t0:
        codes, scales, gp, bias, n_seg, n_off, t = c0, s0, g0, b0, N0, N0 * 0, pid_n
    elif pid_n < t0 + t1:
        codes, scales, gp, bias, n_seg, n_off, t = c1, s1, g1, b1, N1, N0, pid_n - t0
    else:
        codes, scales, gp, bias, n_seg, n_off, t = c2, s2, g2, b2, N2, N0 + N1, pid_n - t0 - t1
    rn = t * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    g = 1.0
    if FMT == 0:
        g = tl.load(gp)
    acc = _tile_product(x_ptr, codes, scales, g, rn, rm, rn < n_seg, rm < M, pid_k, K // 16, K, sxm, sxk,
                       sc_n, ss_n, FMT, B, F32DOT, EVEN_N, EVEN_K, BLOCK_M, BLOCK_N, NG, SPLIT_K)
    _write_tile(acc, out_ptr + n_off * son, part_ptr + n_off, cnt_ptr, bias, pid_m * tl.num_programs(0) + pid_n,
               pid_k, rn, rm, n_seg, M, N0 + N1 + N2, som, son, HAS_BIAS, SPLIT_K)


# Overrides per (format id, M bucket 16 / 64), filled in memory by `benchmarks/kernels.py --tune`. Empty: the
# rule in `pick_config` was measured on H100 for this kernel (2026-11-26, rollout-notes.md / kernels-notes.md v6).
TUNED: dict = {}


def pick_config(m: int, n: int, k: int, fmt_id: int, sms: int) -> dict:
    """Tile sizes and split-K from the problem size (no autotuning: compile once per bucket).

    Measured on H100 (kernels-notes.md, v6): 128-row tiles with 4 groups per iteration everywhere; 4 warps on the
    wide layers (N >= 16384) up to M=32, 8 warps on the narrow ones and at M=64; an 8-column MMA for M <= 8.
    NF4 always gets 8 warps: its select-tree decode spills registers with 4 (sm_90 SASS: 72-128 bytes of stack).
    """
    block_m = 8 if m <= 8 else (16 if m <= 16 else (32 if m <= 32 else 64))
    warps = 4 if n >= 16384 and m <= 32 and fmt_id != 2 else 8
    base = {"BLOCK_N": 128, "NG": 4, "num_warps": warps, "num_stages": 3}
    base.update(TUNED.get((fmt_id, 16 if m <= 16 else 64), {}))
    tiles = triton.cdiv(n, base["BLOCK_N"]) * triton.cdiv(m, block_m)
    iters = triton.cdiv(k // 16, base["NG"])
    split = 1
    while tiles * split < 2 * sms and split * 2 <= iters // 4:
        split *= 2
    return dict(base, BLOCK_M=block_m, SPLIT_K=split)


def _launch(x: torch.Tensor, parts: list, fmt_id: int, block: int, config: dict | None) -> torch.Tensor:
    m, k = x.shape
    ns = [p[0].shape[0] for p in parts]
    total = sum(ns)
    if config is None:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 8
        config = pick_config(m, total, k, fmt_id, sms)
    cfg = dict(config)
    out = torch.empty((m, total), device=x.device, dtype=x.dtype)
    grid = (sum(triton.cdiv(n, cfg["BLOCK_N"]) for n in ns), cfg["SPLIT_K"], triton.cdiv(m, cfg["BLOCK_M"]))
    part, cnt = buffers(out, cfg["SPLIT_K"], grid[0] * grid[2])
    padded = list(parts) + [parts[-1]] * (3 - len(parts))  # a missing segment has zero rows
    codes = [p[0] for p in padded]
    scales = [p[1] for p in padded]
    gs = [p[2] if p[2] is not None else p[1] for p in padded]
    bs = [p[3] if p[3] is not None else out for p in padded]
    _fused_kernel[grid](
        x, *codes, *scales, *gs, *bs, out, part, cnt, m, *(ns + [0] * (3 - len(ns))), k,
        x.stride(0), x.stride(1), codes[0].stride(0), scales[0].stride(0), out.stride(0), out.stride(1),
        FMT=fmt_id, B=block, HAS_BIAS=parts[0][3] is not None, F32DOT=not x.is_cuda,
        EVEN_N=all(n % cfg["BLOCK_N"] == 0 for n in ns), EVEN_K=(k // 16) % cfg["NG"] == 0, **cfg,
    )
    return out


def fused_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, gscale, fmt_id: int,
                 block: int, bias, config: dict | None = None) -> torch.Tensor:
    """``x`` (M, K) float16/bfloat16 -> (M, N) in x's dtype."""
    return _launch(x, [(codes, scales, gscale, bias)], fmt_id, block, config)


def fused_linear_group(x: torch.Tensor, parts: list, fmt_id: int, block: int, config: dict | None = None) -> torch.Tensor:
    """``x`` (M, K) and 2-3 weights ``parts = [(codes, scales, gscale, bias), ...]`` -> (M, sum of out features).

    One launch for projections that share their input (q|k|v, gate|up). Decoding a 7B model at batch 8, the k
    and v projections (512 outputs each) run at ~0.7x of cuBLAS bf16 on their own: too few tiles to fill the
    GPU and hide the tail; launched with q in one grid they share one ramp-up and tail (1.74x for the three,
    kernels-notes.md v6). The weights stay where they are (no concatenated copy of the frozen codes). All
    weights share the format, K and block size, and either all have a bias or none; codes and scales must be
    row-contiguous with equal row strides (as `QuantLinear` stores them).
    """
    if not 2 <= len(parts) <= 3:
        raise ValueError(f"fused_linear_group takes 2 or 3 weights, got {len(parts)}")
    if len({p[0].stride(0) for p in parts}) != 1 or len({p[1].stride(0) for p in parts}) != 1:
        raise ValueError("fused_linear_group: the weights' codes / scales have different row strides")
    if len({p[3] is None for p in parts}) != 1:
        raise ValueError("fused_linear_group: either every weight has a bias or none has")
    return _launch(x, parts, fmt_id, block, config)
