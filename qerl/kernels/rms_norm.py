"""RMSNorm with a float32 weight over bf16/fp16 activations, in one kernel (and its fused residual-add form).

AQN keeps the noised norm weights in float32 (a noise of 5e-4 on a weight near 1 is below bf16's resolution).
vLLM's fused CUDA RMSNorm needs the weight in the activations' dtype, so without this kernel such norms run as
vLLM's native PyTorch code: without torch.compile (the recipes' `compile: false`) that is ~8 small kernels a norm,
which on a 7B decode step at 8 rows cost +22% of the generate (H100, 2026-12-07). These kernels compute exactly
what vLLM's native `rms_norm` / `fused_add_rms_norm` define: the sum (fused form) and the mean of squares in
float32, `x * rsqrt(var + eps)` in float32, times the float32 weight, rounded once to the activations' dtype; the
fused form writes the rounded sum back as the new residual. One program normalizes one row.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, H, sx, sr, so, eps, FUSED: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < H
    x = tl.load(x_ptr + row * sx + cols, mask=ok, other=0.0).to(tl.float32)
    if FUSED:
        x = x + tl.load(res_ptr + row * sr + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(res_ptr + row * sr + cols, x.to(res_ptr.dtype.element_ty), mask=ok)
    var = tl.sum(x * x, axis=0) / H
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    y = x * tl.rsqrt(var + eps) * w
    tl.store(out_ptr + row * so + cols, y.to(out_ptr.dtype.element_ty), mask=ok)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """`t` as (rows, hidden) without a copy where its last dimension is contiguous."""
    return t.reshape(-1, t.shape[-1])


def supports(x: torch.Tensor, weight: torch.Tensor | None) -> bool:
    """The arguments these kernels take: a float32 weight over half-precision activations, hidden <= 16,384."""
    return (weight is not None and weight.dtype == torch.float32 and x.dtype in (torch.bfloat16, torch.float16)
            and weight.dim() == 1 and weight.shape[0] == x.shape[-1] <= 16384 and x.stride(-1) == 1
            and weight.is_contiguous() and weight.device == x.device)


def rms_norm_f32w(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of `x` (..., H) with the float32 `weight` (H,), returned in `x`'s dtype."""
    rows = _rows(x)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    if rows.shape[0]:
        hidden = rows.shape[1]
        _rms_norm_kernel[(rows.shape[0],)](rows, rows, weight, out, hidden, rows.stride(0), rows.stride(0),
                                           out.stride(0), float(eps), FUSED=False,
                                           BLOCK=triton.next_power_of_2(hidden))
    return out.view(x.shape)


def fused_add_rms_norm_f32w_(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                             eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: `residual <- x + residual` (rounded), `x <- RMSNorm(x + residual) * weight`; returns both."""
    rows, res = _rows(x), _rows(residual)
    if rows.data_ptr() != x.data_ptr() or res.data_ptr() != residual.data_ptr() or rows.stride(-1) != 1 \
            or res.stride(-1) != 1:
        raise ValueError("fused_add_rms_norm_f32w_: x and residual must be views whose last dimension is contiguous")
    if rows.shape[0]:
        hidden = rows.shape[1]
        _rms_norm_kernel[(rows.shape[0],)](rows, res, weight, rows, hidden, rows.stride(0), res.stride(0),
                                           rows.stride(0), float(eps), FUSED=True,
                                           BLOCK=triton.next_power_of_2(hidden))
    return x, residual
