"""The Triton kernels against dequantize + matmul in float32 (interpreted on CPU, compiled on CUDA)."""
from __future__ import annotations

import pytest
import torch
from kernel_layers import kernel_args, make_layer, rel_err

from qerl.kernels import dequant, dgrad, fused, gemv, ops, quant_linear, quant_linear_group

KINDS = ["nvfp4", "mxfp4", "nf4", "nf4-dq"]
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("kind", KINDS)
def test_dequantize_kernel_matches_layer_exactly(kind):
    layer = make_layer(kind, 40, 320 if kind.startswith("nf4") else 288, device=DEV)
    codes, s, g, fid, block = kernel_args(layer)
    out = torch.full((40, layer.in_features), float("nan"), device=DEV)
    dequant.dequantize_into(codes, s, g, fid, block, layer.in_features, torch.float32, out=out)
    torch.testing.assert_close(out, layer.dequantize(torch.float32), rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("split", "block_m"), [(1, 16), (2, 16), (3, 8)])
def test_fused_forward_matches_reference(kind, split, block_m):
    # split 1: ragged (N, M and the last K tile masked); split 2: whole tiles (the unmasked loads);
    # split 3 with the 8-column MMA: uneven splits (one with a single iteration, so the prefetch re-reads it)
    n, k, m = (72, 320 if kind.startswith("nf4") else 288, 5) if split != 2 else (64, 256, 16)
    layer = make_layer(kind, n, k, device=DEV)
    x = torch.randn(m, k, device=DEV).to(torch.bfloat16)
    codes, s, g, fid, block = kernel_args(layer)
    cfg = {"BLOCK_M": block_m, "BLOCK_N": 32, "NG": 4, "SPLIT_K": split}
    y = fused.fused_linear(x, codes, s, g, fid, block, layer.bias, config=cfg)
    ref = x.float() @ layer.dequantize(torch.float32).T + layer.bias.float()
    assert y.shape == (m, n) and y.dtype == torch.bfloat16
    assert rel_err(y, ref) <= 1e-2


def test_fused_config_rule():
    assert fused.pick_config(8, 27648, 5120, 0, 132)["BLOCK_M"] == 8
    assert fused.pick_config(9, 27648, 5120, 0, 132)["BLOCK_M"] == 16
    assert fused.pick_config(16, 27648, 5120, 0, 132)["num_warps"] == 4  # wide layer, small M
    assert fused.pick_config(64, 27648, 5120, 0, 132)["num_warps"] == 8
    assert fused.pick_config(16, 512, 3584, 0, 132)["num_warps"] == 8  # narrow layer
    assert fused.pick_config(16, 27648, 5120, 2, 132)["num_warps"] == 8  # NF4 spills with 4


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("m", "split"), [(1, 2), (3, 1)])
def test_gemv_matches_reference(kind, m, split):
    # (1, 2): whole tiles, split K (atomic adds); (3, 1): ragged N and K, bias added in the kernel
    n, k = (64, 256) if split == 2 else (72, 320 if kind.startswith("nf4") else 288)
    layer = make_layer(kind, n, k, device=DEV)
    x = torch.randn(m, k, device=DEV).to(torch.bfloat16)
    codes, s, g, fid, block = kernel_args(layer)
    cfg = {"BLOCK_N": 32, "NG": 4, "SPLIT_K": split}
    y = gemv.gemv_linear(x, codes, s, g, fid, block, layer.bias, config=cfg)
    ref = x.float() @ layer.dequantize(torch.float32).T + layer.bias.float()
    assert y.shape == (m, n)
    assert rel_err(y, ref) <= 1e-2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("split", [1, 2])
def test_fused_input_gradient_matches_reference(kind, split):
    n, k, m = 80, 320 if kind.startswith("nf4") else 288, 3
    layer = make_layer(kind, n, k, bias=False, device=DEV)
    gy = torch.randn(m, n, device=DEV).to(torch.bfloat16)
    codes, s, g, fid, block = kernel_args(layer)
    cfg = {"BLOCK_M": 16, "BLOCK_R": 32, "NG": 4, "SPLIT": split}
    dx = dgrad.fused_dgrad(gy, codes, s, g, fid, block, k, config=cfg)
    ref = gy.float() @ layer.dequantize(torch.float32)
    assert dx.shape == (m, k)
    assert rel_err(dx, ref) <= 1e-2


# rows = 1: GEMV path; 2 * 4: fused; 2 * 67: dequantize + matmul (forward and input gradient alike)
@pytest.mark.parametrize("shape", [(1, 1), (2, 4), (2, ops.FUSED_MAX_M["nvfp4"] + 3)])
def test_quant_linear_autograd_through_custom_op(shape):
    layer = make_layer("nvfp4", 48, 256, device=DEV)
    x = torch.randn(*shape, 256, device=DEV).to(torch.bfloat16).requires_grad_(True)
    y = quant_linear(x, layer)
    gy = torch.randn_like(y)
    y.backward(gy)
    w = layer.dequantize(torch.float32)
    assert y.shape == (*shape, 48)
    assert rel_err(y, x.detach().float() @ w.T + layer.bias.float()) <= 1e-2
    assert rel_err(x.grad, gy.float() @ w) <= 1e-2


def test_fake_impls_give_shapes_without_running():
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer = make_layer("mxfp4", 64, 256, device=DEV)
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(7, 256, dtype=torch.bfloat16, device=DEV)
        y = ops.w4a16_linear(x, layer.codes, layer.scales, None, None, "mxfp4", 32)
        dx = ops.w4a16_dgrad(y, layer.codes, layer.scales, None, "mxfp4", 32, 256)
    assert tuple(y.shape) == (7, 64) and tuple(dx.shape) == (7, 256)


def test_wrong_input_width_is_refused_with_a_message():
    layer = make_layer("nf4", 16, 128, device=DEV)
    with pytest.raises(ValueError, match="in_features=128"):
        quant_linear(torch.randn(3, 64, device=DEV), layer)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("outs", "split", "bias"), [((64, 32, 32), 1, True), ((40, 72), 2, False)])
def test_group_forward_matches_each_weight(kind, outs, split, bias):
    # q|k|v-like (three weights, bias) and gate|up-like (two, ragged N, split K): one launch, one output
    k, m = (320 if kind.startswith("nf4") else 288), 5
    layers = [make_layer(kind, n, k, bias=bias, device=DEV) for n in outs]
    x = torch.randn(m, k, device=DEV).to(torch.bfloat16)
    parts, fid, block = [], None, None
    for layer in layers:
        codes, s, g, fid, block = kernel_args(layer)
        parts.append((codes, s, g, layer.bias))
    cfg = {"BLOCK_M": 8, "BLOCK_N": 32, "NG": 4, "SPLIT_K": split}
    y = fused.fused_linear_group(x, parts, fid, block, config=cfg)
    assert y.shape == (m, sum(outs))
    for layer, part in zip(layers, y.split(list(outs), dim=1)):
        ref = x.float() @ layer.dequantize(torch.float32).T + (layer.bias.float() if bias else 0.0)
        assert rel_err(part, ref) <= 1e-2


def test_quant_linear_group_matches_layers_and_declines_what_it_cannot_group():
    k = 256
    q, kk, v = (make_layer("nvfp4", n, k, device=DEV) for n in (64, 32, 32))
    x = torch.randn(2, 3, k, device=DEV).to(torch.bfloat16)  # 6 rows: the fused kernel's range
    outs = quant_linear_group(x, [q, kk, v])
    assert [tuple(o.shape) for o in outs] == [(2, 3, 64), (2, 3, 32), (2, 3, 32)]
    for layer, out in zip((q, kk, v), outs):
        ref = x.float() @ layer.dequantize(torch.float32).T + layer.bias.float()
        assert rel_err(out, ref) <= 1e-2
    assert quant_linear_group(x[:1, :2], [q, kk, v]) is None  # 2 rows: the GEMV's range, per layer
    assert quant_linear_group(x, [q, make_layer("mxfp4", 32, k, device=DEV)]) is None  # formats differ
    assert quant_linear_group(x, [q, make_layer("nvfp4", 32, k, bias=False, device=DEV)]) is None  # bias on one
    with pytest.raises(ValueError, match="input has 128 features on its last axis, the layers expect in_features=256"):
        quant_linear_group(x[..., :128], [q, kk, v])
