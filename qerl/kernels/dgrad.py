"""Fused input gradient for the frozen 4-bit base: ``dx = dy @ W`` from packed W, small/medium M.

A program owns a slice of K (whole scale blocks) and a few tokens, and walks over N (the
reduction), dequantizing each (BLOCK_R, slice) weight tile once; with SPLIT > 1 the walk over N
is split and partial sums meet in a float32 buffer by atomic adds. Even and odd columns of W
accumulate separately and are written interleaved.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from qerl.kernels.formats import block_multiplier, dequant_pair


@triton.jit
def _dgrad_kernel(
    g_ptr, codes_ptr, scales_ptr, gs_ptr, out_ptr,
    M, N, K,
    sgm, sgn, sc_n, ss_n, som, sok,
    FMT: tl.constexpr, B: tl.constexpr, ATOMIC: tl.constexpr, F32DOT: tl.constexpr, EVEN_R: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, NG: tl.constexpr, SPLIT: tl.constexpr,
):
    GPS: tl.constexpr = B // 16
    pid_k = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    KG = K // 16
    iters = tl.cdiv(N, BLOCK_R)
    per_split = tl.cdiv(iters, SPLIT)
    it0 = pid_s * per_split
    it1 = tl.minimum(it0 + per_split, iters)

    kg = pid_k * NG
    rg = tl.arange(0, NG)
    rj = tl.arange(0, 8)
    rr = tl.arange(0, BLOCK_R)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = rm < M
    g_ok = (kg + rg) < KG
    gsc = 1.0
    if FMT == 0:
        gsc = tl.load(gs_ptr)

    acc_e = tl.zeros((NG * 8, BLOCK_M), dtype=tl.float32)
    acc_o = tl.zeros((NG * 8, BLOCK_M), dtype=tl.float32)
    for it in range(it0, it1):
        rn = it * BLOCK_R + rr
        n_ok = rn < N
        c_ptrs = codes_ptr + rn[:, None, None] * sc_n + (kg + rg)[None, :, None] * 8 + rj[None, None, :]
        s_ptrs = scales_ptr + rn[:, None] * ss_n + ((kg + rg) // GPS)[None, :]
        if EVEN_R:
            byt = tl.load(c_ptrs)
            s = tl.load(s_ptrs)
        else:
            byt = tl.load(c_ptrs, mask=n_ok[:, None, None] & g_ok[None, :, None], other=0)
            s = tl.load(s_ptrs, mask=n_ok[:, None] & g_ok[None, :], other=0)
        mult = block_multiplier(s, gsc, FMT)
        lo, hi = dequant_pair(byt, mult[:, :, None], FMT, not F32DOT)
        lo2 = tl.reshape(lo, (BLOCK_R, NG * 8))
        hi2 = tl.reshape(hi, (BLOCK_R, NG * 8))
        gt = tl.load(g_ptr + rm[None, :] * sgm + rn[:, None] * sgn, mask=m_ok[None, :] & n_ok[:, None], other=0.0)
        if F32DOT:  # the interpreter's bf16 dot is wrong (triton 3.9); it computes in float32 instead
            gt = gt.to(tl.float32)
        else:
            lo2 = lo2.to(g_ptr.dtype.element_ty)
            hi2 = hi2.to(g_ptr.dtype.element_ty)
        acc_e = tl.dot(tl.trans(lo2), gt, acc_e)
        acc_o = tl.dot(tl.trans(hi2), gt, acc_o)

    col = kg * 16 + tl.reshape(rg[:, None] * 16 + 2 * rj[None, :], (NG * 8,))
    omask = (col < K)[:, None] & m_ok[None, :]
    optr = out_ptr + rm[None, :] * som + col[:, None] * sok
    if ATOMIC:
        tl.atomic_add(optr, acc_e, mask=omask)
        tl.atomic_add(optr + sok, acc_o, mask=omask)
    else:
        tl.store(optr, acc_e.to(out_ptr.dtype.element_ty), mask=omask)
        tl.store(optr + sok, acc_o.to(out_ptr.dtype.element_ty), mask=omask)


# (format id, BLOCK_M) -> tiles, picked by `benchmarks/kernels.py --tune` on H100 (2026-11-25, 32B gate_up).
TUNED: dict = {
    (0, 16): {"BLOCK_R": 64, "NG": 8, "num_warps": 8, "num_stages": 3}, (0, 64): {"BLOCK_R": 64, "NG": 4, "num_warps": 4, "num_stages": 4},
    (1, 16): {"BLOCK_R": 32, "NG": 16, "num_warps": 8, "num_stages": 3}, (1, 64): {"BLOCK_R": 64, "NG": 8, "num_warps": 8, "num_stages": 3},
    (2, 16): {"BLOCK_R": 64, "NG": 4, "num_warps": 4, "num_stages": 4}, (2, 64): {"BLOCK_R": 64, "NG": 8, "num_warps": 8, "num_stages": 3},
}


def pick_dgrad_config(m: int, n: int, k: int, fmt_id: int, sms: int) -> dict:
    """Tile sizes and split over N from the problem size."""
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    base = {"BLOCK_R": 64, "NG": 8, "num_warps": 8, "num_stages": 3}
    base.update(TUNED.get((fmt_id, block_m), {}))
    tiles = triton.cdiv(k // 16, base["NG"]) * triton.cdiv(m, block_m)
    iters = triton.cdiv(n, base["BLOCK_R"])
    split = 1
    while tiles * split < 2 * sms and split * 2 <= iters // 4:
        split *= 2
    return dict(base, BLOCK_M=block_m, SPLIT=split)


def fused_dgrad(grad: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, gscale, fmt_id: int,
                block: int, in_features: int, config: dict | None = None) -> torch.Tensor:
    """``grad`` (M, N) -> (M, K) in grad's dtype."""
    m, n = grad.shape
    k = in_features
    if config is None:
        sms = torch.cuda.get_device_properties(grad.device).multi_processor_count if grad.is_cuda else 8
        config = pick_dgrad_config(m, n, k, fmt_id, sms)
    cfg = dict(config)
    atomic = cfg["SPLIT"] > 1
    out = torch.zeros((m, k), device=grad.device, dtype=torch.float32) if atomic else torch.empty(
        (m, k), device=grad.device, dtype=grad.dtype)
    g = gscale if gscale is not None else scales
    grid = (triton.cdiv(k // 16, cfg["NG"]), cfg["SPLIT"], triton.cdiv(m, cfg["BLOCK_M"]))
    even = n % cfg["BLOCK_R"] == 0 and (k // 16) % cfg["NG"] == 0
    _dgrad_kernel[grid](
        grad, codes, scales, g, out, m, n, k,
        grad.stride(0), grad.stride(1), codes.stride(0), scales.stride(0), out.stride(0), out.stride(1),
        FMT=fmt_id, B=block, ATOMIC=atomic, F32DOT=not grad.is_cuda, EVEN_R=even, **cfg,
    )
    return out.to(grad.dtype) if atomic else out
