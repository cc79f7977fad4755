"""Split-K without atomics on the output: each split stores its float32 partial tile, the last one to arrive sums them.

Used by the GEMV and the fused tensor-core kernel. Partials live in a (SPLIT_K, M, N) float32 buffer; a per-tile
int32 arrival counter tells a program whether it is the last of its tile. The last program adds the partials
(read through L2, ``.cg``), adds the bias, casts and writes the output, then resets the counter - so a launch
needs no zero-filled output, no cast kernel after it, and the counters are all zero between launches. Counters
are kept per (device, stream), so launches on different streams never share them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_COUNTERS: dict = {}


def counters(device: torch.device, n: int) -> torch.Tensor:
    """Self-resetting int32 arrival counters (all zero between launches), one set per (device, stream)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


@triton.jit
def last_arrival(cnt_ptr, tile, SPLIT_K: tl.constexpr):
    """After this program's partials are stored: True in the last program of `tile` to get here."""
    tl.debug_barrier()
    done = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
    return done == SPLIT_K - 1


@triton.jit
def reset(cnt_ptr, tile):
    tl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed", scope="gpu")  # ready for the next launch


@triton.jit
def reduce_tile(acc, part_ptr, out_ptr, cnt_ptr, bias_ptr, tile, pid_k, rn, rm, n_end, M, ldp, som, son,
                HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """Split-K epilogue of a (len(rn) outputs, len(rm) rows) float32 tile ``acc``: the output is ``out[rm, rn]``
    for rn < n_end; partial sums sit at ``part[split, rm, rn]`` with row stride ``ldp`` and split stride M * ldp."""
    n_ok = rn < n_end
    mask = n_ok[:, None] & (rm < M)[None, :]
    off = rm[None, :] * ldp + rn[:, None]
    tl.store(part_ptr + pid_k * M * ldp + off, acc, mask=mask)
    if last_arrival(cnt_ptr, tile, SPLIT_K):
        tot = tl.load(part_ptr + off, mask=mask, other=0.0, cache_modifier=".cg")
        for sk in range(1, SPLIT_K):
            tot += tl.load(part_ptr + sk * M * ldp + off, mask=mask, other=0.0, cache_modifier=".cg")
        if HAS_BIAS:
            tot += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptr + rm[None, :] * som + rn[:, None] * son, tot.to(out_ptr.dtype.element_ty), mask=mask)
        reset(cnt_ptr, tile)


def buffers(out: torch.Tensor, split: int, tiles: int):
    """(partials, counters) for a launch with `split` K splits over `tiles` output tiles (placeholders if split == 1)."""
    if split == 1:
        return out, out
    m, n = out.shape
    return torch.empty((split, m, n), device=out.device, dtype=torch.float32), counters(out.device, tiles)
