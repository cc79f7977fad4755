"""Fused dequantize + GEMM for small and medium M: ``y = x @ W.T (+ bias)`` from packed 4-bit W.

Each program owns BLOCK_N output features and one split of K; it reads every packed byte of its
tile once, dequantizes it in registers and multiplies on the tensor cores with the operands
swapped (``y.T = W @ x.T``) so that the weight rows fill the MMA's large dimension and the few
tokens its small one. With SPLIT_K > 1 the partial sums meet in a float32 buffer by atomic adds.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from qerl.kernels.formats import block_multiplier, dequant_pair


@triton.jit
def _fused_kernel(
    x_ptr, codes_ptr, scales_ptr, g_ptr, bias_ptr, out_ptr,
    M, N, K,
    sxm, sxk, sc_n, ss_n, som, son,
    FMT: tl.constexpr, B: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr, F32DOT: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr, SPLIT_K: tl.constexpr,
):
    # a tile is (BLOCK_N rows, NG groups of 16 weights = 8 bytes); a group's scale is block (16 g) // B
    GPS: tl.constexpr = B // 16
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    KG = K // 16
    iters = tl.cdiv(KG, NG)
    per_split = tl.cdiv(iters, SPLIT_K)
    it0 = pid_k * per_split
    it1 = tl.minimum(it0 + per_split, iters)

    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rg = tl.arange(0, NG)
    rj = tl.arange(0, 8)
    n_ok = rn < N
    m_ok = rm < M
    g = 1.0
    if FMT == 0:
        g = tl.load(g_ptr)

    c_ptrs = codes_ptr + rn[:, None, None] * sc_n + rg[None, :, None] * 8 + rj[None, None, :]
    col = tl.reshape(rg[:, None] * 16 + 2 * rj[None, :], (NG * 8,))  # x column of each even code
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for it in range(it0, it1):
        kg = it * NG
        s_ptrs = scales_ptr + rn[:, None] * ss_n + ((kg + rg) // GPS)[None, :]
        if EVEN_N and EVEN_K:
            byt = tl.load(c_ptrs + kg * 8)
            s = tl.load(s_ptrs)
        else:
            g_ok = (kg + rg) < KG
            byt = tl.load(c_ptrs + kg * 8, mask=n_ok[:, None, None] & g_ok[None, :, None], other=0)
            s = tl.load(s_ptrs, mask=n_ok[:, None] & g_ok[None, :], other=0)
        mult = block_multiplier(s, g, FMT)
        lo, hi = dequant_pair(byt, mult[:, :, None], FMT, not F32DOT)
        lo2 = tl.reshape(lo, (BLOCK_N, NG * 8))
        hi2 = tl.reshape(hi, (BLOCK_N, NG * 8))
        kcol = kg * 16 + col
        xmask = m_ok[None, :] & (kcol < K)[:, None]
        xe = tl.load(x_ptr + rm[None, :] * sxm + kcol[:, None] * sxk, mask=xmask, other=0.0)
        xo = tl.load(x_ptr + rm[None, :] * sxm + (kcol + 1)[:, None] * sxk, mask=xmask, other=0.0)
        if F32DOT:  # the interpreter's bf16 dot is wrong (triton 3.9); it computes in float32 instead
            xe = xe.to(tl.float32)
            xo = xo.to(tl.float32)
        else:
            lo2 = lo2.to(x_ptr.dtype.element_ty)
            hi2 = hi2.to(x_ptr.dtype.element_ty)
        acc = tl.dot(lo2, xe, acc)
        acc = tl.dot(hi2, xo, acc)

    omask = n_ok[:, None] & m_ok[None, :]
    optr = out_ptr + rm[None, :] * som + rn[:, None] * son
    if ATOMIC:
        tl.atomic_add(optr, acc, mask=omask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=omask)


# (format id, BLOCK_M) -> tiles, picked by `benchmarks/kernels.py --tune` on H100 (2026-11-25, 32B gate_up);
# the NF4 entries were tuned with a variant since replaced (see kernels-notes.md). --tune overwrites them.
TUNED: dict = {
    (0, 16): {"BLOCK_N": 128, "NG": 4, "num_warps": 8, "num_stages": 4}, (0, 64): {"BLOCK_N": 128, "NG": 4, "num_warps": 8, "num_stages": 4},
    (1, 16): {"BLOCK_N": 256, "NG": 4, "num_warps": 8, "num_stages": 3}, (1, 64): {"BLOCK_N": 128, "NG": 4, "num_warps": 8, "num_stages": 4},
    (2, 16): {"BLOCK_N": 256, "NG": 4, "num_warps": 8, "num_stages": 3}, (2, 64): {"BLOCK_N": 256, "NG": 4, "num_warps": 8, "num_stages": 3},
}


def pick_config(m: int, n: int, k: int, fmt_id: int, sms: int) -> dict:
    """Tile sizes and split-K from the problem size (no autotuning: compile once per bucket)."""
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    base = {"BLOCK_N": 128, "NG": 8, "num_warps": 8, "num_stages": 3}
    base.update(TUNED.get((fmt_id, block_m), {}))
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
    atomic = split > 1
    out = torch.zeros((m, n), device=x.device, dtype=torch.float32) if atomic else torch.empty(
        (m, n), device=x.device, dtype=x.dtype)
    g = gscale if gscale is not None else scales
    b = bias if bias is not None else out
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), split, triton.cdiv(m, cfg["BLOCK_M"]))
    _fused_kernel[grid](
        x, codes, scales, g, b, out, m, n, k,
        x.stride(0), x.stride(1), codes.stride(0), scales.stride(0), out.stride(0), out.stride(1),
        FMT=fmt_id, B=block, HAS_BIAS=bias is not None and not atomic, ATOMIC=atomic, F32DOT=not x.is_cuda,
        EVEN_N=n % cfg["BLOCK_N"] == 0, EVEN_K=(k // 16) % cfg["NG"] == 0, **cfg,
    )
    if atomic:
        out = out.to(x.dtype) if bias is None else (out + bias.to(torch.float32)).to(x.dtype)
    return out
