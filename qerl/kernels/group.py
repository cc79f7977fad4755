"""One launch for projections that share their input (q|k|v, gate|up): ``[x @ W_i.T + b_i]`` as one (M, sum N_i) tensor.

Decoding a 7B model at batch 8, the k and v projections (512 outputs each) run at ~0.7x of cuBLAS bf16 on their
own: too few tiles to fill the GPU and hide the tail. Launched with q in one grid, the three share one ramp-up and
tail. Each program finds its segment (up to three weights, same format, input size and block) from its tile
index, then runs the fused kernel's tile product (`fused.tile_product`) and epilogue. The weights stay where they
are (no concatenated copy of the frozen codes). Decode-only: no autograd.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from qerl.kernels.fused import pick_config, tile_product, write_tile
from qerl.kernels.splitk import buffers


@triton.jit
def _group_kernel(
    x_ptr, c0, c1, c2, s0, s1, s2, g0, g1, g2, b0, b1, b2, out_ptr, part_ptr, cnt_ptr,
    M, N0, N1, N2, K,
    sxm, sxk, sc_n, ss_n, som, son,
    FMT: tl.constexpr, B: tl.constexpr, HAS_BIAS: tl.constexpr, F32DOT: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr, SPLIT_K: tl.constexpr,
):
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
    acc = tile_product(x_ptr, codes, scales, g, rn, rm, rn < n_seg, rm < M, pid_k, K // 16, K, sxm, sxk,
                       sc_n, ss_n, FMT, B, F32DOT, EVEN_N, EVEN_K, BLOCK_M, BLOCK_N, NG, SPLIT_K)
    write_tile(acc, out_ptr + n_off * son, part_ptr + n_off, cnt_ptr, bias, pid_m * tl.num_programs(0) + pid_n,
               pid_k, rn, rm, n_seg, M, N0 + N1 + N2, som, son, HAS_BIAS, SPLIT_K)


def fused_linear_group(x: torch.Tensor, parts: list, fmt_id: int, block: int, config: dict | None = None) -> torch.Tensor:
    """``x`` (M, K) and 2-3 weights ``parts = [(codes, scales, gscale, bias), ...]`` -> (M, sum of out features).

    All weights share the format, K and block size, and either all have a bias or none; codes and scales
    must be row-contiguous with equal row strides (as `QuantLinear` stores them).
    """
    if not 2 <= len(parts) <= 3:
        raise ValueError(f"fused_linear_group takes 2 or 3 weights, got {len(parts)}")
    m, k = x.shape
    ns = [p[0].shape[0] for p in parts]
    if len({p[0].stride(0) for p in parts}) != 1 or len({p[1].stride(0) for p in parts}) != 1:
        raise ValueError("fused_linear_group: the weights' codes / scales have different row strides")
    has_bias = parts[0][3] is not None
    if any((p[3] is not None) != has_bias for p in parts):
        raise ValueError("fused_linear_group: either every weight has a bias or none has")
    padded = list(parts) + [parts[-1]] * (3 - len(parts))  # a missing third segment has zero rows
    n_pad = ns + [0] * (3 - len(ns))
    total = sum(ns)
    if config is None:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 8
        config = pick_config(m, total, k, fmt_id, sms)
    cfg = dict(config)
    out = torch.empty((m, total), device=x.device, dtype=x.dtype)
    tiles = sum(triton.cdiv(n, cfg["BLOCK_N"]) for n in ns)
    grid = (tiles, cfg["SPLIT_K"], triton.cdiv(m, cfg["BLOCK_M"]))
    part, cnt = buffers(out, cfg["SPLIT_K"], grid[0] * grid[2])
    codes = [p[0] for p in padded]
    scales = [p[1] for p in padded]
    gs = [p[2] if p[2] is not None else p[1] for p in padded]
    bs = [p[3] if p[3] is not None else out for p in padded]
    _group_kernel[grid](
        x, *codes, *scales, *gs, *bs, out, part, cnt, m, *n_pad, k,
        x.stride(0), x.stride(1), codes[0].stride(0), scales[0].stride(0), out.stride(0), out.stride(1),
        FMT=fmt_id, B=block, HAS_BIAS=has_bias, F32DOT=not x.is_cuda,
        EVEN_N=all(n % cfg["BLOCK_N"] == 0 for n in ns), EVEN_K=(k // 16) % cfg["NG"] == 0, **cfg,
    )
    return out
