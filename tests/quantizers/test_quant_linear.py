"""QuantLinear: contract buffers, reference forward, exact input gradient, frozen base; quantize_model swaps."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qerl.quantizers import MXFP4, NF4, NVFP4, QuantizationError, QuantLinear

QUANTIZERS = [NVFP4(), MXFP4(), NF4(), NF4(double_quant=True)]

CONTRACT = {  # format -> {buffer: (dtype, shape as a function of (out, in))}
    "nvfp4": {"codes": (torch.uint8, lambda o, i: (o, i // 2)), "scales": (torch.float8_e4m3fn, lambda o, i: (o, i // 16)),
              "global_scale": (torch.float32, lambda o, i: ())},
    "mxfp4": {"codes": (torch.uint8, lambda o, i: (o, i // 2)), "scales": (torch.uint8, lambda o, i: (o, i // 32))},
    "nf4": {"codes": (torch.uint8, lambda o, i: (o, i // 2)), "scales": (torch.float32, lambda o, i: (o, i // 64))},
    "nf4-dq": {"codes": (torch.uint8, lambda o, i: (o, i // 2)), "scales": (torch.uint8, lambda o, i: (o, i // 64)),
               "scales_scale": (torch.float32, lambda o, i: (-(-(o * i // 64) // 256),)),
               "scales_offset": (torch.float32, lambda o, i: ())},
}


def _layer(quantizer, out_f=48, in_f=128, bias=True, seed=0) -> tuple[QuantLinear, nn.Linear]:
    torch.manual_seed(seed)
    linear = nn.Linear(in_f, out_f, bias=bias)
    qw = quantizer.quantize(linear.weight.data, name="proj")
    b = None if linear.bias is None else linear.bias.data.to(torch.bfloat16)
    return QuantLinear.from_quantized(qw, bias=b, name="proj"), linear


@pytest.mark.parametrize("quantizer", QUANTIZERS, ids=lambda q: type(q).__name__ + str(vars(q)))
def test_buffers_follow_the_contract(quantizer):
    layer, _ = _layer(quantizer, out_f=40, in_f=1024)
    key = "nf4-dq" if getattr(quantizer, "double_quant", False) else layer.format
    expected = CONTRACT[key]
    buffers = {n: b for n, b in layer.named_buffers() if n != "bias"}
    assert set(buffers) == set(expected)
    for name, (dtype, shape) in expected.items():
        assert buffers[name].dtype == dtype, name
        assert tuple(buffers[name].shape) == shape(40, 1024), name
    assert layer.bias.dtype == torch.bfloat16 and layer.bias.shape == (40,)
    assert list(layer.parameters()) == []  # frozen: nothing for an optimizer to find
    assert (layer.in_features, layer.out_features, layer.block_size) == (1024, 40, type(quantizer).block_size)
    assert layer.block_scales().dtype == torch.float32 and layer.block_scales().shape == (40, 1024 // layer.block_size)
    assert set(layer.state_dict()) == set(expected) | {"bias"}


@pytest.mark.parametrize("quantizer", QUANTIZERS, ids=lambda q: type(q).__name__ + str(vars(q)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_and_input_gradient_match_dequantized_linear(quantizer, dtype):
    layer, _ = _layer(quantizer)
    x = torch.randn(3, 5, 128, dtype=dtype, requires_grad=True)
    y = layer(x)
    w = layer.dequantize(dtype)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = F.linear(x_ref, w, layer.bias.to(dtype))
    assert torch.equal(y, y_ref)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    assert torch.equal(x.grad, x_ref.grad)


def test_backward_does_not_keep_the_dequantized_weight():
    layer, _ = _layer(NVFP4(), out_f=64, in_f=256, bias=False)
    x = torch.randn(2, 256, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        layer(x).sum().backward()
    assert (64, 256) not in saved


def test_without_bias_and_gradcheck_in_double():
    layer, _ = _layer(MXFP4(), out_f=8, in_f=32, bias=False)
    assert layer.bias is None
    x = torch.randn(2, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,))


@pytest.mark.parametrize("quantizer", QUANTIZERS, ids=lambda q: type(q).__name__ + str(vars(q)))
def test_dtype_casts_of_the_model_leave_the_stored_format_alone(quantizer):
    layer, _ = _layer(quantizer)
    before = {k: v.clone() for k, v in layer.quantized_tensors().items()}
    weight = layer.dequantize(torch.float32)
    wrapper = nn.Sequential(layer).to(torch.float16)
    wrapper.to(torch.bfloat16).float().to("cpu")
    for key, value in layer.quantized_tensors().items():
        assert value.dtype == before[key].dtype, key
    assert torch.equal(layer.dequantize(torch.float32), weight)
    assert layer.bias.dtype == torch.float32  # the bias follows the model like any buffer


def test_a_second_class_cannot_claim_a_format():
    from qerl.quantizers import Quantizer

    with pytest.raises(TypeError, match="claims storage format 'nvfp4'.*NVFP4"):
        type("Impostor", (Quantizer,), {"format": "nvfp4"})


def test_quantlinear_refuses_bad_in_features():
    with pytest.raises(QuantizationError, match=r"'layers.3.o_proj'.*in_features=40.*\(8, 40\)"):
        QuantLinear(40, 8, "nvfp4", {}, name="layers.3.o_proj")


def test_quantize_model_swaps_all_linears_but_lm_head_and_skip(make_tiny_llama):
    model = make_tiny_llama()
    embed = model.model.embed_tokens.weight.clone()
    x = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        ref = model(x).logits
    out = NVFP4().quantize_model(model, skip=("down_proj",))
    assert out is model
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear))}
    assert kinds["lm_head"] == "Linear"
    assert all(kinds[n] == "Linear" for n in kinds if n.endswith("down_proj"))
    swapped = [n for n, k in kinds.items() if k == "QuantLinear"]
    assert len(swapped) == 2 * 6  # q, k, v, o, gate, up per layer
    assert torch.equal(model.model.embed_tokens.weight, embed)  # embeddings untouched
    with torch.no_grad():
        got = model(x).logits
    assert 0 < ((got - ref).norm() / ref.norm()).item() < 0.2


def test_quantize_model_names_the_offending_layer(make_tiny_llama):
    model = make_tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(QuantizationError, match=r"'model.layers.1.mlp.up_proj'"):
        NF4().quantize_model(model)


def test_cpu_forward_uses_the_reference_path_even_if_kernels_exist(monkeypatch):
    from qerl.quantizers import layers

    called = []
    monkeypatch.setattr(layers, "_kernel_quant_linear", lambda: (lambda x, layer: called.append(1)))
    layer, _ = _layer(NVFP4())
    layer(torch.randn(2, 128))
    assert called == []  # CPU input: kernels are for CUDA only


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("quantizer", QUANTIZERS, ids=lambda q: type(q).__name__ + str(vars(q)))
def test_cuda_quantize_matches_cpu(quantizer):
    w = torch.randn(256, 1024, dtype=torch.bfloat16)
    cpu, gpu = quantizer.quantize(w), quantizer.quantize(w.cuda())
    assert all(t.is_cuda for t in gpu.tensors.values())
    if getattr(quantizer, "double_quant", False):  # the mean of the absmax is a reduction: order may differ
        torch.testing.assert_close(gpu.dequantize(torch.float32).cpu(), cpu.dequantize(torch.float32), rtol=0.02, atol=1e-3)
        return
    for k in cpu.tensors:
        a, b = gpu.tensors[k].cpu(), cpu.tensors[k]
        assert torch.equal(a.view(torch.uint8) if a.element_size() == 1 else a, b.view(torch.uint8) if b.element_size() == 1 else b), k
