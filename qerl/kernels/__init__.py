"""Fused Triton W4A16 kernels for NVFP4, MXFP4 and NF4 (see docs in ``qerl/kernels/ops.py``).

Public surface, per the contract with ``qerl.quantizers`` (notes/quant_contract.md):

- ``available()``: True when Triton imports and a CUDA device is present.
- ``quant_linear(x, layer)``: ``x @ W.T + bias`` for a ``QuantLinear``-like ``layer`` holding
  ``codes``/``scales`` (and ``global_scale`` or NF4 double-quant buffers); autograd-aware (the
  input gradient runs the fused ``grad @ W`` kernel; the frozen weight gets no gradient).

Importing this package stays light: Triton and the kernels load on first use.
"""
from __future__ import annotations

import functools

__all__ = ["available", "quant_linear"]


@functools.lru_cache(maxsize=1)
def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def available() -> bool:
    """Whether ``quant_linear`` can run here (Triton importable and a CUDA device present)."""
    import torch

    return torch.cuda.is_available() and _triton_ok()


def _absmax_for_kernel(layer):
    """NF4 scales as float32 absmax; with double quant, decoded once and cached on the layer.

    The cache is keyed by the identity of the ``scales`` buffer (the base is frozen; replacing the buffer,
    e.g. by ``layer.to(device)``, refreshes it).
    """
    import torch

    scales = layer.scales
    if scales.dtype == torch.float32:
        return scales
    cached = getattr(layer, "_kernel_absmax", None)
    if cached is None or cached[0] is not scales:
        cached = (scales, layer.block_scales().to(torch.float32).contiguous())
        object.__setattr__(layer, "_kernel_absmax", cached)
    return cached[1]


def quant_linear(x, layer):
    """``x @ W.T (+ bias)`` from ``layer``'s packed 4-bit weight; x is (..., in_features)."""
    import torch

    from qerl.kernels import ops

    fmt = layer.format
    if fmt not in ("nvfp4", "mxfp4", "nf4"):
        raise ValueError(f"qerl.kernels.quant_linear: layer format {fmt!r} has no kernel; "
                         f"expected one of nvfp4, mxfp4, nf4 (layer {layer!r}).")
    k = layer.in_features
    if x.shape[-1] != k:
        raise ValueError(f"qerl.kernels.quant_linear: input has {x.shape[-1]} features on its last axis, "
                         f"the layer expects in_features={k} (layer {layer!r}).")
    scales = _absmax_for_kernel(layer) if fmt == "nf4" else layer.scales
    gscale = getattr(layer, "global_scale", None) if fmt == "nvfp4" else None
    if gscale is not None:
        gscale = gscale.to(torch.float32).reshape(())
    compute = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    x2 = x.reshape(-1, k).to(compute)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    bias = getattr(layer, "bias", None)
    if bias is not None:
        bias = bias.to(compute)
    y = ops.w4a16_linear(x2, layer.codes, scales, gscale, bias, fmt, int(layer.block_size))
    return y.reshape(*x.shape[:-1], layer.out_features).to(x.dtype)
