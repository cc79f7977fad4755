"""Contract every QUANTIZERS entry meets (built-ins and plugins alike)."""
from __future__ import annotations

import pytest
import torch

from qerl.quantizers import QuantizationError, Quantizer, QuantLinear, format_codec
from qerl.registry import QUANTIZERS


def test_the_builtins_are_registered():
    assert {"NVFP4", "MXFP4", "NF4"} <= set(QUANTIZERS.names())


def test_entry_is_a_documented_quantizer_owning_its_format(quantizers_entry):
    cls = quantizers_entry.cls
    assert issubclass(cls, Quantizer)
    assert quantizers_entry.summary, f"{quantizers_entry.name} needs a one-line docstring (`qerl list`)"
    assert cls.format and format_codec(cls.format) is cls


def test_quantize_contract(quantizers_entry):
    quantizer = quantizers_entry.cls()  # buildable from its defaults (YAML class_path only)
    block = quantizer.block_size
    weight = torch.randn(24, 4 * block, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16)
    qw = quantizer.quantize(weight)
    deq = qw.dequantize(dtype=torch.bfloat16)
    assert deq.shape == weight.shape and deq.dtype == torch.bfloat16
    assert qw.dequantize(torch.float32).dtype == torch.float32
    assert qw.nbytes == sum(t.numel() * t.element_size() for t in qw.tensors.values())
    assert 4.0 <= 8 * qw.nbytes / weight.numel() <= 5.0
    err = ((deq.float() - weight.float()).norm() / weight.float().norm()).item()
    assert 0 < err < 0.15


def test_quantize_is_deterministic(quantizers_entry):
    quantizer = quantizers_entry.cls()
    weight = torch.randn(8, 2 * quantizer.block_size)
    a, b = quantizer.quantize(weight), quantizer.quantize(weight.clone())
    assert all(torch.equal(a.tensors[k].view(torch.uint8) if a.tensors[k].element_size() == 1 else a.tensors[k],
                           b.tensors[k].view(torch.uint8) if b.tensors[k].element_size() == 1 else b.tensors[k])
               for k in a.tensors)


def test_bad_weights_name_the_layer(quantizers_entry):
    quantizer = quantizers_entry.cls()
    with pytest.raises(QuantizationError, match=r"'layers.0.q_proj'.*in_features"):
        quantizer.quantize(torch.randn(4, quantizer.block_size + 2), name="layers.0.q_proj")
    nan = torch.randn(4, quantizer.block_size)
    nan[1, 1] = float("nan")
    with pytest.raises(QuantizationError, match=r"'layers.0.k_proj'.*NaN"):
        quantizer.quantize(nan, name="layers.0.k_proj")


def test_quantize_model_swaps_linears_into_working_quantlinears(quantizers_entry):
    quantizer = quantizers_entry.cls()
    k = 2 * quantizer.block_size
    model = torch.nn.Sequential(torch.nn.Linear(k, k), torch.nn.ReLU(), torch.nn.Linear(k, 8))
    model.add_module("lm_head", torch.nn.Linear(8, 8))
    out = quantizer.quantize_model(model)
    assert out is model
    assert isinstance(model[0], QuantLinear) and isinstance(model[2], QuantLinear)
    assert type(model.lm_head) is torch.nn.Linear
    x = torch.randn(3, k, requires_grad=True)
    y = model[0](x)
    ref = torch.nn.functional.linear(x, model[0].dequantize(torch.float32), model[0].bias.float())
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    assert x.grad is not None and list(model[0].parameters()) == []
