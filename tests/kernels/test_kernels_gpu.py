"""GPU tests on real Qwen2.5 shapes: the compiled kernels, QuantLinear's CUDA path, torch.compile, CUDA graphs."""
from __future__ import annotations

import pytest
import torch
from kernel_layers import make_layer, rel_err

from qerl.kernels import quant_linear

pytestmark = pytest.mark.gpu

SHAPES = [(512, 3584), (3584, 18944), (27648, 5120), (5120, 27648)]  # (out, in): 7B k_proj, 7B down, 32B up, 32B down


@pytest.mark.parametrize("kind", ["nvfp4", "mxfp4", "nf4", "nf4-dq"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[1]}x{s[0]}")
def test_forward_and_input_gradient_on_real_shapes(kind, shape):
    n, k = shape
    layer = make_layer(kind, n, k, device="cuda")
    w = layer.dequantize(torch.float32)
    for m in (1, 5, 16, 64, 200, 1024):
        x = torch.randn(m, k, device="cuda").to(torch.bfloat16).requires_grad_(True)
        y = quant_linear(x, layer)
        gy = torch.randn_like(y)
        y.backward(gy)
        assert rel_err(y, x.detach().float() @ w.T + layer.bias.float()) <= 1e-2, (m, "forward")
        assert rel_err(x.grad, gy.float() @ w) <= 1e-2, (m, "input gradient")


def test_quant_linear_layer_uses_the_kernel_on_cuda():
    layer = make_layer("nvfp4", 1024, 2048, device="cuda")
    x = torch.randn(3, 2048, device="cuda").to(torch.bfloat16)
    torch.testing.assert_close(layer(x), quant_linear(x, layer), rtol=0, atol=0)


def test_torch_compile_fullgraph_matches_eager():
    layer = make_layer("mxfp4", 2048, 1024, device="cuda")
    x = torch.randn(4, 1024, device="cuda").to(torch.bfloat16)
    compiled = torch.compile(lambda t: quant_linear(t, layer) * 2.0, fullgraph=True)
    torch.testing.assert_close(compiled(x), quant_linear(x, layer) * 2.0, rtol=0, atol=0)


def test_cuda_graph_replay_matches_eager():
    layer = make_layer("nf4", 4096, 1024, device="cuda")
    x = torch.randn(8, 1024, device="cuda").to(torch.bfloat16)
    quant_linear(x, layer)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = quant_linear(x, layer)
    x.copy_(torch.randn(8, 1024, device="cuda").to(torch.bfloat16))
    graph.replay()
    torch.testing.assert_close(y, quant_linear(x, layer), rtol=0, atol=0)
