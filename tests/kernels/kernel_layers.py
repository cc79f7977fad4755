"""Real QuantLinear layers (from the real quantizers) for the kernel tests, with fresh random weights."""
from __future__ import annotations

import torch

from qerl.quantizers import MXFP4, NF4, NVFP4
from qerl.quantizers.layers import QuantLinear

QUANTIZERS = {"nvfp4": NVFP4, "mxfp4": MXFP4, "nf4": NF4, "nf4-dq": lambda: NF4(double_quant=True)}


def make_layer(kind: str, n: int, k: int, bias: bool = True, device: str = "cpu") -> QuantLinear:
    w = torch.randn(n, k, device=device) * (0.02 + torch.rand(n, 1, device=device))
    b = torch.randn(n, device=device).to(torch.bfloat16) if bias else None
    return QuantLinear.from_quantized(QUANTIZERS[kind]().quantize(w), bias=b).to(device)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all(), "kernel output has NaN/Inf (unwritten or wrong elements)"
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def kernel_args(layer: QuantLinear):
    """(codes, scales as the kernels take them, global scale or None, format id, block size) of a layer."""
    from qerl.kernels import _absmax_for_kernel, ops
    from qerl.kernels.formats import FORMAT_IDS

    s = _absmax_for_kernel(layer) if layer.format == "nf4" else layer.scales
    g = layer.global_scale if layer.format == "nvfp4" else None
    return layer.codes, ops._scales_arg(s), g, FORMAT_IDS[layer.format], layer.block_size
