"""Fused Triton W4A16 kernels for NVFP4, MXFP4 and NF4 (see docs in ``qerl/kernels/ops.py``).

Public surface, used by ``qerl.quantizers``:

- ``available()``: True when Triton imports and a CUDA device is present.
- ``quant_linear(x, layer)``: ``x @ W.T + bias`` for a ``QuantLinear``-like ``layer`` holding
  ``codes``/``scales`` (and ``global_scale`` or NF4 double-quant buffers); autograd-aware (the
  input gradient runs the fused ``grad @ W`` kernel; the frozen weight gets no gradient).
- ``quant_linear_group(x, layers)``: the outputs of 2-3 such layers on one input in one launch
  (decode only), or None where the grouped kernel does not apply.

Importing this package stays light: Triton and the kernels load on first use.
"""
from __future__ import annotations

import functools

__all__ = ["available", "quant_linear", "quant_linear_group"]
FORMATS = ("nvfp4", "mxfp4", "nf4")


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


def _kernel_args(layer, compute):
    """(codes, scales, global scale, bias) of ``layer`` as the kernels take them, the bias in ``compute`` dtype."""
    import torch

    fmt = layer.format
    scales = _absmax_for_kernel(layer) if fmt == "nf4" else layer.scales
    gscale = getattr(layer, "global_scale", None) if fmt == "nvfp4" else None
    if gscale is not None:
        gscale = gscale.to(torch.float32).reshape(())
    bias = getattr(layer, "bias", None)
    if bias is not None:
        bias = bias.to(compute)
    return layer.codes, scales, gscale, bias


def _as_rows(x, k):
    """x (..., k) -> contiguous-along-K (M, k) in bfloat16/float16 (the kernels' activation dtypes)."""
    import torch

    compute = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    x2 = x.reshape(-1, k).to(compute)
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def quant_linear(x, layer):
    """``x @ W.T (+ bias)`` from ``layer``'s packed 4-bit weight; x is (..., in_features)."""
    from qerl.kernels import ops

    fmt = layer.format
    if fmt not in FORMATS:
        raise ValueError(f"qerl.kernels.quant_linear: layer format {fmt!r} has no kernel; "
                         f"expected one of nvfp4, mxfp4, nf4 (layer {layer!r}).")
    k = layer.in_features
    if x.shape[-1] != k:
        raise ValueError(f"qerl.kernels.quant_linear: input has {x.shape[-1]} features on its last axis, "
                         f"the layer expects in_features={k} (layer {layer!r}).")
    x2 = _as_rows(x, k)
    codes, scales, gscale, bias = _kernel_args(layer, x2.dtype)
    y = ops.w4a16_linear(x2, codes, scales, gscale, bias, fmt, int(layer.block_size))
    return y.reshape(*x.shape[:-1], layer.out_features).to(x.dtype)


def quant_linear_group(x, layers):
    """``[layer(x) for layer in layers]`` for 2-3 4-bit layers sharing their input, in one kernel launch.

    Returns views into one (..., sum of out features) tensor, or None when the grouped kernel does not
    apply - the layers differ in format, in_features or block size, only some have a bias, or the number of
    rows is outside the fused kernel's range (the GEMV and dequantize + cuBLAS paths are per layer): call
    the layers one by one then. No autograd: for decoding.
    """
    from qerl.kernels import fused, ops
    from qerl.kernels.formats import FORMAT_IDS

    first = layers[0]
    fmt, k, block = first.format, first.in_features, int(first.block_size)
    if not 2 <= len(layers) <= 3 or fmt not in FORMATS or len({lay.bias is None for lay in layers}) != 1:
        return None
    if any(lay.format != fmt or lay.in_features != k or int(lay.block_size) != block for lay in layers):
        return None
    if x.shape[-1] != k:
        raise ValueError(f"qerl.kernels.quant_linear_group: input has {x.shape[-1]} features on its last axis, "
                         f"the layers expect in_features={k}.")
    if not ops.GEMV_MAX_M[fmt] < x.numel() // k <= ops.FUSED_MAX_M[fmt]:
        return None
    x2 = _as_rows(x, k)
    parts = []
    for lay in layers:
        codes, scales, gscale, bias = _kernel_args(lay, x2.dtype)
        parts.append((codes, ops._scales_arg(scales), gscale, bias))
    y = fused.fused_linear_group(x2, parts, FORMAT_IDS[fmt], block).to(x.dtype)
    return [t.reshape(*x.shape[:-1], lay.out_features)
            for t, lay in zip(y.split([lay.out_features for lay in layers], dim=-1), layers)]
