"""gemv (the M <= 16 decode kernel) against dequantize + matmul in float32 (interpreted on CPU, compiled on CUDA)."""
from __future__ import annotations

import pytest
import torch
from kernel_layers import kernel_args, make_layer, rel_err

from qerl.kernels import fused, gemv, splitk

KINDS = ["nvfp4", "mxfp4", "nf4", "nf4-dq"]
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _check(kind, m, n, k, cfg, bias=True):
    layer = make_layer(kind, n, k, bias=bias, device=DEV)
    x = torch.randn(m, k, device=DEV).to(torch.bfloat16)
    codes, s, g, fid, block = kernel_args(layer)
    y = gemv.gemv_linear(x, codes, s, g, fid, block, layer.bias, config=cfg)
    ref = x.float() @ layer.dequantize(torch.float32).T
    if bias:
        ref = ref + layer.bias.float()
    assert y.shape == (m, n) and y.dtype == x.dtype
    assert rel_err(y, ref) <= 1e-2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8])
def test_gemv_ragged_matches_reference(kind, m):
    # ragged N (72 rows, tiles of 32) and K (18 or 20 groups, 4 per iteration: the last one masked), bias in the kernel
    _check(kind, m, 72, 320 if kind.startswith("nf4") else 288, {"BLOCK_N": 32, "NG": 4, "SPLIT_K": 1})


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("m", "bias"), [(1, False), (2, True), (5, True), (8, False)])
def test_gemv_split_k_matches_reference(kind, m, bias):
    # whole tiles (unmasked loads); K split in 3 (one split ends early): partials summed by the last program
    _check(kind, m, 64, 384, {"BLOCK_N": 32, "NG": 2, "SPLIT_K": 3}, bias=bias)


@pytest.mark.parametrize(("m", "block_m"), [(3, 2), (13, None), (16, None)])
def test_gemv_row_chunks(m, block_m):
    # M split over several programs (the last chunk partial), with split K and ragged N
    cfg = {"BLOCK_N": 32, "NG": 4, "SPLIT_K": 2}
    if block_m is not None:
        cfg["BLOCK_M"] = block_m
    _check("nvfp4", m, 40, 256, cfg)


def test_gemv_counters_reset_between_calls():
    # the per-tile arrival counters must be zero again after each launch: a second call gives the same result
    layer = make_layer("mxfp4", 32, 256, device=DEV)
    x = torch.randn(2, 256, device=DEV).to(torch.bfloat16)
    codes, s, g, fid, block = kernel_args(layer)
    cfg = {"BLOCK_N": 32, "NG": 4, "SPLIT_K": 2}
    y1 = gemv.gemv_linear(x, codes, s, g, fid, block, layer.bias, config=cfg)
    y2 = gemv.gemv_linear(x, codes, s, g, fid, block, layer.bias, config=cfg)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert int(splitk.counters(x.device, 1)[:4].abs().sum()) == 0


def test_gemv_default_config_and_limits():
    _check("nvfp4", 4, 64, 512, None)
    layer = make_layer("nvfp4", 16, 128, device=DEV)
    codes, s, g, fid, block = kernel_args(layer)
    with pytest.raises(ValueError, match="rows"):
        gemv.gemv_linear(torch.randn(gemv.GEMV_MAX_M + 1, 128, device=DEV).to(torch.bfloat16),
                           codes, s, g, fid, block, None)


def test_fused_split_k_counters_reset_between_calls():
    # the fused kernel's split-K epilogue (last program sums the partials) shares the counters with the GEMV
    layer = make_layer("nvfp4", 72, 512, device=DEV)
    x = torch.randn(9, 512, device=DEV).to(torch.bfloat16)
    codes, s, g, fid, block = kernel_args(layer)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "NG": 4, "SPLIT_K": 4}
    y1 = fused.fused_linear(x, codes, s, g, fid, block, layer.bias, config=cfg)
    y2 = fused.fused_linear(x, codes, s, g, fid, block, layer.bias, config=cfg)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    ref = x.float() @ layer.dequantize(torch.float32).T + layer.bias.float()
    assert rel_err(y1, ref) <= 1e-2
    assert int(splitk.counters(x.device, 1)[:8].abs().sum()) == 0
