"""torch.library custom ops around the kernels, with fake (meta) implementations and autograd.

``qerl::w4a16_linear(x, codes, scales, gscale, bias, fmt, block_size)`` -> ``x @ W.T + bias`` and
``qerl::w4a16_dgrad(grad, codes, scales, gscale, fmt, block_size, in_features)`` -> ``grad @ W``.
Being opaque custom ops with fake impls, torch.compile traces through them without graph breaks
and CUDA graphs capture them. The forward op's autograd formula calls the dgrad op (the frozen
base gets no weight gradient; nothing but the packed tensors is saved for backward).

Dispatch by M (rows of x), per format: the tensor-core-free GEMV kernel up to ``GEMV_MAX_M[fmt]`` rows,
the fused dequant + tensor-core GEMM up to ``FUSED_MAX_M[fmt]``, above that dequantize into a shared bf16
buffer and call cuBLAS (``benchmarks/kernels.py`` measures where they cross).

Annotations use ``Optional[...]`` on purpose: custom_op infers the op schema from them, and that form is
read the same way by every torch this runs on (2.11 on the GPU machine, 2.13 here).
"""
# ruff: noqa: UP045
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from qerl.kernels import dequant, dgrad, fused, gemv
from qerl.kernels.formats import FORMAT_IDS

# Largest M that takes the fused kernel, per format; measured on H100 (benchmarks/results/kernels-notes.md):
# the FP4 forward wins up to M=64 and its input gradient up to M=16; NF4's select-tree decode loses to
# dequantize + cuBLAS above M=16 forward and everywhere in the input gradient. From M=256 on cuBLAS wins.
FUSED_MAX_M = {"nvfp4": 64, "mxfp4": 64, "nf4": 16}
# Largest M that takes the tensor-core-free GEMV kernel (gemv.py); measured on H100 (kernels-notes.md, v5/v6):
# it beats the fused kernel up to M=4 for the FP4 formats (with v6's prefetching fused kernel, fused wins at
# M=8: 120 vs 144 us on 32B gate_up) and up to M=8 for NF4, whose select-tree decode costs the fused kernel more.
GEMV_MAX_M = {"nvfp4": 4, "mxfp4": 4, "nf4": 8}
DGRAD_FUSED_MAX_M = {"nvfp4": 16, "mxfp4": 16, "nf4": 0}


def _scales_arg(scales: torch.Tensor) -> torch.Tensor:
    # E4M3 scales are decoded from their bits inside the kernel.
    return scales.view(torch.uint8) if scales.dtype == torch.float8_e4m3fn else scales


@torch.library.custom_op("qerl::w4a16_linear", mutates_args=())
def w4a16_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, gscale: Optional[torch.Tensor],
                 bias: Optional[torch.Tensor], fmt: str, block_size: int) -> torch.Tensor:
    fid = FORMAT_IDS[fmt]
    s = _scales_arg(scales)
    if x.shape[0] <= GEMV_MAX_M.get(fmt, 0) and x.stride(1) == 1:
        return gemv.gemv_linear(x, codes, s, gscale, fid, block_size, bias)
    if x.shape[0] <= FUSED_MAX_M.get(fmt, 0):
        return fused.fused_linear(x, codes, s, gscale, fid, block_size, bias)
    w = dequant.dequantize_into(codes, s, gscale, fid, block_size, x.shape[1], x.dtype)
    return F.linear(x, w, bias)


@w4a16_linear.register_fake
def _(x, codes, scales, gscale, bias, fmt, block_size):
    return x.new_empty((x.shape[0], codes.shape[0]))


@torch.library.custom_op("qerl::w4a16_dgrad", mutates_args=())
def w4a16_dgrad(grad: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, gscale: Optional[torch.Tensor],
                fmt: str, block_size: int, in_features: int) -> torch.Tensor:
    fid = FORMAT_IDS[fmt]
    s = _scales_arg(scales)
    if grad.shape[0] <= DGRAD_FUSED_MAX_M.get(fmt, 0):
        return dgrad.fused_dgrad(grad, codes, s, gscale, fid, block_size, in_features)
    w = dequant.dequantize_into(codes, s, gscale, fid, block_size, in_features, grad.dtype)
    return grad @ w


@w4a16_dgrad.register_fake
def _(grad, codes, scales, gscale, fmt, block_size, in_features):
    return grad.new_empty((grad.shape[0], in_features))


def _setup_context(ctx, inputs, output):
    x, codes, scales, gscale, _bias, fmt, block_size = inputs
    ctx.save_for_backward(codes, scales, gscale)
    ctx.fmt, ctx.block_size, ctx.in_features = fmt, block_size, x.shape[1]


def _backward(ctx, grad):
    codes, scales, gscale = ctx.saved_tensors
    dx = None
    if ctx.needs_input_grad[0]:
        dx = w4a16_dgrad(grad.contiguous(), codes, scales, gscale, ctx.fmt, ctx.block_size, ctx.in_features)
    return dx, None, None, None, None, None, None


w4a16_linear.register_autograd(_backward, setup_context=_setup_context)
