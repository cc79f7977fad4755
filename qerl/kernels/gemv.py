"""Fused dequantize + GEMV for decode (M = 1..16 rows; ops.py sends it M <= 8): no tensor cores, no shared memory.

What it does to get close to the memory floor (v5 in benchmarks/results/kernels-notes.md; v4, the first GEMV,
loaded 8 bytes per thread, gathered x with stride 2, did not prefetch and needed zero-fill + cast kernels):

- the packed codes are loaded as a 2-D (BLOCK_N, NG*8) byte tile (NG*8 contiguous bytes per row), so
  each thread gets 16-byte vector loads instead of 8-byte ones, then viewed as (BLOCK_N, NG, 8);
- x is loaded contiguously ((NG, 16) per row, split into even/odd columns in registers) instead of two
  stride-2 gathers;
- the next iteration's codes and scales are loaded before the current ones are used (software
  prefetch through loop-carried registers: Triton does not pipeline a loop without ``tl.dot``);
- codes and scales are read once (``evict_first``), x is re-read by every program (``evict_last``);
- the 16 products of a group are summed by a chain of FMAs (one instruction per weight and row)
  instead of multiply + FMA + reduction tree (~1.5), the block scale is applied once per group;
- every dequantized weight is reused for all BLOCK_M rows (<= 8; larger M runs ceil(M / 8) row chunks,
  whose programs sit next to each other in the grid so the second chunk finds the weights in L2);
- split-K partial sums go to a float32 (SPLIT_K, M, N) buffer and the last program of each output tile
  (a per-tile arrival counter) adds them up, adds the bias and writes the output: one launch, no
  zero-fill and no cast kernels. The counters reset themselves; they are kept per (device, stream), so
  two launches on different streams never share them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from qerl.kernels.formats import _e2m1_hi, _e2m1_lo, _nf4_value, block_multiplier
from qerl.kernels.splitk import buffers, last_arrival, reset


@triton.jit
def _e2m1_pair_f32_asm(b):
    """Both E2M1 codes of each byte as float32 times 2**-14, four bytes per PTX instance (GPU only).

    The decode of ``formats._e2m1_pair_asm`` (prmt + shifts + lop3 into float16 pairs) with the widening to
    float32 done inside the same asm block (cvt.f32.f16 of each half: one HADD2.F32 each), so the compiler
    does not first unpack the float16 halves into separate registers.
    """
    return tl.inline_asm_elementwise(
        asm="""
        {
        .reg .b32 t, a, c, p0, p1, p2, p3;
        .reg .b16 l, u;
        prmt.b32 t, $8, 0, 0x4140;
        shl.b32 a, t, 9; shl.b32 c, t, 12; and.b32 c, c, 0x80008000; lop3.b32 p0, a, 0x0E000E00, c, 0xEA;
        shl.b32 a, t, 5; shl.b32 c, t, 8; and.b32 c, c, 0x80008000; lop3.b32 p2, a, 0x0E000E00, c, 0xEA;
        prmt.b32 t, $8, 0, 0x4342;
        shl.b32 a, t, 9; shl.b32 c, t, 12; and.b32 c, c, 0x80008000; lop3.b32 p1, a, 0x0E000E00, c, 0xEA;
        shl.b32 a, t, 5; shl.b32 c, t, 8; and.b32 c, c, 0x80008000; lop3.b32 p3, a, 0x0E000E00, c, 0xEA;
        mov.b32 {l, u}, p0; cvt.f32.f16 $0, l; cvt.f32.f16 $1, u;
        mov.b32 {l, u}, p1; cvt.f32.f16 $2, l; cvt.f32.f16 $3, u;
        mov.b32 {l, u}, p2; cvt.f32.f16 $4, l; cvt.f32.f16 $5, u;
        mov.b32 {l, u}, p3; cvt.f32.f16 $6, l; cvt.f32.f16 $7, u;
        }
        """,
        constraints="=r,=r,=r,=r,=r,=r,=r,=r,r",
        args=[b],
        dtype=(tl.float32, tl.float32),
        is_pure=True,
        pack=4,
    )


@triton.jit
def _decode(b, FMT: tl.constexpr, ASM: tl.constexpr):
    """Bytes -> (even, odd) float32 code values (E2M1 times 2**-14, or the NF4 codebook value)."""
    if FMT == 2:
        h = b.to(tl.int32)
        lo = _nf4_value(h & 15)
        hi = _nf4_value(h >> 4)
    elif ASM:
        lo, hi = _e2m1_pair_f32_asm(b)
    else:
        lo = _e2m1_lo(b)
        hi = _e2m1_hi(b)
    return lo, hi


@triton.jit
def _split8(t, A: tl.constexpr, B: tl.constexpr):
    """(A, B, 8) -> eight (A, B) tensors, columns 0..7 (the last axis is held by one thread: no data movement)."""
    a, b = tl.split(tl.reshape(t, (A, B, 4, 2)))  # columns 0,2,4,6 | 1,3,5,7
    a0, a1 = tl.split(tl.reshape(a, (A, B, 2, 2)))  # 0,4 | 2,6
    b0, b1 = tl.split(tl.reshape(b, (A, B, 2, 2)))  # 1,5 | 3,7
    c0, c4 = tl.split(a0)
    c2, c6 = tl.split(a1)
    c1, c5 = tl.split(b0)
    c3, c7 = tl.split(b1)
    return c0, c1, c2, c3, c4, c5, c6, c7


@triton.jit
def _load_tile(codes_ptr, scales_ptr, rn, kg, KG, sc_n, ss_n,
               GPS: tl.constexpr, NG: tl.constexpr, EVEN_K: tl.constexpr):
    """Bytes (BLOCK_N, NG, 8) and scales (BLOCK_N, NG) of groups kg .. kg+NG-1 (rows already clamped)."""
    cb = tl.arange(0, NG * 8)
    rg = tl.arange(0, NG)
    c_ptrs = codes_ptr + rn[:, None] * sc_n + kg * 8 + cb[None, :]
    if EVEN_K:
        byt = tl.load(c_ptrs, eviction_policy="evict_first")
    else:
        byt = tl.load(c_ptrs, mask=((kg + cb // 8) < KG)[None, :], other=0, eviction_policy="evict_first")
    if NG <= GPS:
        # the NG groups of an iteration share one scale block (kg is a multiple of NG, NG divides GPS): one
        # scale per row, broadcast over the groups (its (BLOCK_N,) layout is the row slice of the code tile's)
        s_row = scales_ptr + rn * ss_n + kg // GPS
        if EVEN_K:
            s1 = tl.load(s_row, eviction_policy="evict_first")
        else:
            s1 = tl.load(s_row, mask=(rn * 0 + kg) < KG, other=0, eviction_policy="evict_first")
        s = tl.broadcast_to(s1[:, None], (rn.shape[0], NG))
    else:
        s_ptrs = scales_ptr + rn[:, None] * ss_n + ((kg + rg) // GPS)[None, :]
        if EVEN_K:
            s = tl.load(s_ptrs, eviction_policy="evict_first")
        else:
            s = tl.load(s_ptrs, mask=((kg + rg) < KG)[None, :], other=0, eviction_policy="evict_first")
    return tl.reshape(byt, (rn.shape[0], NG, 8)), s


@triton.jit
def _row_partial(x_ptr, row, M, kg, KG, w, mult,
                 NG: tl.constexpr, EVEN_K: tl.constexpr, EVEN_M: tl.constexpr):
    """sum over each 16-weight group of w * x[row], times the group's multiplier: (BLOCK_N, NG) float32."""
    cx = tl.arange(0, NG * 16)
    xp = x_ptr + row + kg * 16 + cx
    if EVEN_K and EVEN_M:
        xv = tl.load(xp, eviction_policy="evict_last")
    else:
        ok = (kg + cx // 16) < KG
        xv = tl.load(xp, mask=ok & ((cx * 0 + row) < M), other=0.0, eviction_policy="evict_last")
    xe, xo = tl.split(tl.reshape(xv.to(tl.float32), (1, NG, 8, 2)))
    e0, e1, e2, e3, e4, e5, e6, e7 = _split8(xe, 1, NG)
    o0, o1, o2, o3, o4, o5, o6, o7 = _split8(xo, 1, NG)
    l0, l1, l2, l3, l4, l5, l6, l7, h0, h1, h2, h3, h4, h5, h6, h7 = w
    p = l0 * e0
    p = tl.fma(h0, o0, p)
    p = tl.fma(l1, e1, p)
    p = tl.fma(h1, o1, p)
    p = tl.fma(l2, e2, p)
    p = tl.fma(h2, o2, p)
    p = tl.fma(l3, e3, p)
    p = tl.fma(h3, o3, p)
    p = tl.fma(l4, e4, p)
    p = tl.fma(h4, o4, p)
    p = tl.fma(l5, e5, p)
    p = tl.fma(h5, o5, p)
    p = tl.fma(l6, e6, p)
    p = tl.fma(h6, o6, p)
    p = tl.fma(l7, e7, p)
    p = tl.fma(h7, o7, p)
    return p * mult


@triton.jit
def _gemv_kernel(
    x_ptr, codes_ptr, scales_ptr, g_ptr, bias_ptr, out_ptr, part_ptr, cnt_ptr,
    M, N, K,
    sxm, sc_n, ss_n, som,
    FMT: tl.constexpr, B: tl.constexpr, HAS_BIAS: tl.constexpr, ASM: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, EVEN_M: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr, SPLIT_K: tl.constexpr,
):
    GPS: tl.constexpr = B // 16
    pid_m = tl.program_id(0)  # fastest: the row chunks of one weight tile run next to each other (L2 reuse)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    KG = K // 16
    iters = tl.cdiv(KG, NG)
    per_split = tl.cdiv(iters, SPLIT_K)
    it0 = pid_k * per_split
    it1 = tl.minimum(it0 + per_split, iters)
    m0 = pid_m * BLOCK_M

    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    if EVEN_N:
        rl = rn
    else:
        rl = tl.minimum(rn, N - 1)  # out-of-range rows re-read the last row (discarded): loads stay unmasked
    g = 1.0
    if FMT == 0:
        g = tl.load(g_ptr)

    acc0 = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
    acc4 = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
    acc5 = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
    acc6 = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
    acc7 = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
    xrow = m0 * sxm
    # prefetch: the tile of iteration `it` is loaded during iteration it-1 (an empty split loads a valid tile)
    byt, s = _load_tile(codes_ptr, scales_ptr, rl, tl.minimum(it0, iters - 1) * NG, KG, sc_n, ss_n,
                        GPS, NG, EVEN_K)
    for it in range(it0, it1):
        kg = it * NG
        byt_n, s_n = _load_tile(codes_ptr, scales_ptr, rl, tl.minimum(it + 1, it1 - 1) * NG, KG, sc_n, ss_n,
                                GPS, NG, EVEN_K)
        mult = block_multiplier(s, g, FMT)
        lo, hi = _decode(byt, FMT, ASM)
        l0, l1, l2, l3, l4, l5, l6, l7 = _split8(lo, BLOCK_N, NG)
        h0, h1, h2, h3, h4, h5, h6, h7 = _split8(hi, BLOCK_N, NG)
        w = (l0, l1, l2, l3, l4, l5, l6, l7, h0, h1, h2, h3, h4, h5, h6, h7)
        acc0 += _row_partial(x_ptr, xrow, M * sxm, kg, KG, w, mult, NG, EVEN_K, EVEN_M)
        if BLOCK_M > 1:
            acc1 += _row_partial(x_ptr, xrow + sxm, M * sxm, kg, KG, w, mult, NG, EVEN_K, EVEN_M)
        if BLOCK_M > 2:
            acc2 += _row_partial(x_ptr, xrow + 2 * sxm, M * sxm, kg, KG, w, mult, NG, EVEN_K, EVEN_M)
        if BLOCK_M > 3:
            acc3 += _row_partial(x_ptr, xrow + 3 * sxm, M * sxm, kg, KG, w, mult, NG, EVEN_K, EVEN_M)
        if BLOCK_M > 4:
            acc4 += _row_partial(x_ptr, xrow + 4 * sxm, M * sxm, kg, KG, w, mult, NG, EVEN_K, EVEN_M)
        if BLOCK_M > 5:
            acc5 += _row_partial(x_ptr, xrow + 5 * sxm, M * sxm, kg, KG, w, mult, NG, EVEN_K, EVEN_M)
        if BLOCK_M > 6:
            acc6 += _row_partial(x_ptr, xrow + 6 * sxm, M * sxm, kg, KG, w, mult, NG, EVEN_K, EVEN_M)
        if BLOCK_M > 7:
            acc7 += _row_partial(x_ptr, xrow + 7 * sxm, M * sxm, kg, KG, w, mult, NG, EVEN_K, EVEN_M)
        byt = byt_n
        s = s_n

    bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    if SPLIT_K == 1:
        dst = out_ptr
        stride = som
    else:
        dst = part_ptr + pid_k * M * N  # float32 partials (SPLIT_K, M, N)
        stride = N
    for m in tl.static_range(BLOCK_M):
        if m == 0:
            y = tl.sum(acc0, axis=1)
        elif m == 1:
            y = tl.sum(acc1, axis=1)
        elif m == 2:
            y = tl.sum(acc2, axis=1)
        elif m == 3:
            y = tl.sum(acc3, axis=1)
        elif m == 4:
            y = tl.sum(acc4, axis=1)
        elif m == 5:
            y = tl.sum(acc5, axis=1)
        elif m == 6:
            y = tl.sum(acc6, axis=1)
        else:
            y = tl.sum(acc7, axis=1)
        if SPLIT_K == 1:
            y = y + bias
        tl.store(dst + (m0 + m) * stride + rn, y.to(dst.dtype.element_ty), mask=n_ok & ((rn * 0 + m0 + m) < M))
    if SPLIT_K > 1:
        # the last program to finish this output tile sums the partials (read through L2, not L1)
        tile = pid_m * tl.num_programs(1) + pid_n
        if last_arrival(cnt_ptr, tile, SPLIT_K):
            for m in tl.static_range(BLOCK_M):
                tot = bias
                for sk in range(SPLIT_K):
                    tot += tl.load(part_ptr + (sk * M + m0 + m) * N + rn, mask=n_ok & ((rn * 0 + m0 + m) < M), other=0.0,
                                   cache_modifier=".cg")
                tl.store(out_ptr + (m0 + m) * som + rn, tot.to(out_ptr.dtype.element_ty), mask=n_ok & ((rn * 0 + m0 + m) < M))
            reset(cnt_ptr, tile)


GEMV_MAX_M = 16
ROWS_PER_PROGRAM = 8  # the most rows one program multiplies each dequantized weight with

# Measured on H100 (kernels-notes.md, v5; kernels-gemv-h100-2026-11-26.json): 256-row tiles, 2 groups per
# iteration and 4 warps are fastest from M=4 on and for NF4; the FP4 formats at M <= 2 are 1.1-1.6x faster with
# 128-row tiles (twice the tiles, so half the split-K partial sums). SPLIT_K=1 was 2-5x slower.
DEFAULT_CONFIG = {"BLOCK_N": 256, "NG": 2, "num_warps": 4}
SMALL_M_FP4_CONFIG = {"BLOCK_N": 128, "NG": 2, "num_warps": 4}


def default_config(fmt_id: int, m: int) -> dict:
    """The measured best tile for this format and number of rows."""
    return dict(SMALL_M_FP4_CONFIG if fmt_id in (0, 1) and m <= 2 else DEFAULT_CONFIG)


def pick_split(tiles: int, iters: int, sms: int) -> int:
    """Split K until the grid has ~4 programs per SM, keeping >= 8 loop iterations per program (at most 32)."""
    split = 1
    while tiles * split < 4 * sms and split * 2 <= min(iters // 8, 32):
        split *= 2
    return split


def gemv_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, gscale, fmt_id: int, block: int,
                 bias, config: dict | None = None) -> torch.Tensor:
    """``x`` (M <= 16, K) -> (M, N) in x's dtype; x must be contiguous along K.

    ``config``: BLOCK_N, NG (16-weight groups per row and iteration; NG * 8 bytes are loaded per row),
    num_warps, and optionally SPLIT_K (default: from the grid size) and BLOCK_M (rows per program, <= 8).
    """
    m, k = x.shape
    n = codes.shape[0]
    if m > GEMV_MAX_M or m < 1:
        raise ValueError(f"gemv_linear handles 1..{GEMV_MAX_M} rows, got x of shape {tuple(x.shape)}")
    if x.stride(1) != 1:
        raise ValueError("gemv_linear needs x contiguous along K")
    cfg = default_config(fmt_id, m)
    cfg.update(config or {})
    block_m = cfg.pop("BLOCK_M", None)
    if block_m is None:
        chunks = triton.cdiv(m, ROWS_PER_PROGRAM)
        block_m = triton.cdiv(m, chunks)
    if not 1 <= block_m <= ROWS_PER_PROGRAM:
        raise ValueError(f"BLOCK_M must be in 1..{ROWS_PER_PROGRAM}, got {block_m}")
    chunks = triton.cdiv(m, block_m)
    tiles = triton.cdiv(n, cfg["BLOCK_N"])
    iters = triton.cdiv(k // 16, cfg["NG"])
    split = cfg.pop("SPLIT_K", None)
    if split is None:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 8
        split = pick_split(tiles * chunks, iters, sms)
    split = max(1, min(split, iters))
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    part, cnt = buffers(out, split, tiles * chunks)
    grid = (chunks, tiles, split)
    _gemv_kernel[grid](
        x, codes, scales, gscale if gscale is not None else scales, bias if bias is not None else out, out, part, cnt,
        m, n, k, x.stride(0), codes.stride(0), scales.stride(0), out.stride(0),
        FMT=fmt_id, B=block, HAS_BIAS=bias is not None, ASM=x.is_cuda,
        EVEN_N=n % cfg["BLOCK_N"] == 0, EVEN_K=(k // 16) % cfg["NG"] == 0, EVEN_M=m % block_m == 0,
        BLOCK_M=block_m, SPLIT_K=split, **cfg,
    )
    return out
