"""The installable example plugin (plugins/qerl-example-plugin): INT4 found through the entry point and usable."""
from __future__ import annotations

import importlib.metadata

import pytest
import torch

from qerl.quantizers import QuantizationError, QuantLinear
from qerl.registry import QUANTIZERS

try:  # look the distribution up without importing it: the registry must be the one to import it
    importlib.metadata.distribution("qerl-example-plugin")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("run `pip install -e plugins/qerl-example-plugin --no-deps`", allow_module_level=True)


def _int4(**kwargs):
    return QUANTIZERS.get("INT4")(**kwargs)


def test_registered_from_the_entry_point_of_its_distribution():
    eps = importlib.metadata.entry_points(group="qerl.plugins")
    assert any(ep.name == "example" and ep.value == "qerl_example_plugin" for ep in eps)
    info = QUANTIZERS.info("int4")
    assert info.plugin == "qerl-example-plugin" and info.module == "qerl_example_plugin.int4"
    assert info.summary.startswith("Group-wise asymmetric INT4")


def test_hand_computed_group():
    row = torch.tensor([[-1.5, 0.0, 0.1, 3.0] + [0.0] * 28])  # min -1.5, max 3 -> scale 0.3, zero 5
    qw = _int4(group_size=32).quantize(row)
    assert qw.tensors["scales"].dtype == torch.float16
    assert qw.tensors["scales"].float().item() == pytest.approx(0.3, rel=1e-3)
    assert qw.tensors["zeros"].tolist() == [[5]]
    scale = qw.tensors["scales"].float().item()
    assert qw.dequantize(torch.float32)[0, :4].tolist() == pytest.approx([-5 * scale, 0.0, 0.0, 10 * scale])


def test_storage_error_and_exact_zeros():
    w = torch.randn(64, 1024, generator=torch.Generator().manual_seed(0))
    w[:, :128] = 0
    qw = _int4().quantize(w)
    assert qw.bits_per_weight == pytest.approx(4 + 24 / 128)
    d = qw.dequantize(torch.float32)
    assert torch.all(d[:, :128] == 0)
    assert ((d - w).norm() / w.norm()).item() < 0.12
    assert ((_int4(group_size=32).quantize(w).dequantize(torch.float32) - w).norm() / w.norm()).item() < 0.09


def test_bad_input_is_refused():
    with pytest.raises(QuantizationError, match=r"'mlp.up_proj'.*\(4, 96\).*block size 128"):
        _int4().quantize(torch.randn(4, 96), name="mlp.up_proj")
    with pytest.raises(ValueError, match="group_size=7"):
        _int4(group_size=7)


def test_quant_linear_lora_and_checkpoint_work_unchanged(make_tiny_llama, tmp_path):
    from qerl.lora.apply import apply_lora
    from qerl.quantizers.checkpoint import load_quantized, save_quantized

    model = _int4(group_size=32).quantize_model(make_tiny_llama())
    layer = model.model.layers[0].mlp.gate_proj
    assert isinstance(layer, QuantLinear) and layer.format == "int4" and layer.block_size == 32
    x = torch.randn(2, 64, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, x @ layer.dequantize(torch.float32).T, rtol=0, atol=0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, layer.dequantize(torch.float32).sum(0).expand(2, -1), rtol=1e-6, atol=1e-6)

    save_quantized(model, tmp_path)
    again = load_quantized(make_tiny_llama(seed=5), tmp_path, expect_format="int4")
    assert again.model.layers[0].mlp.gate_proj.block_size == 32
    ids = torch.randint(0, 96, (1, 6))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)

    peft_model = apply_lora(again, rank=2)
    loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if "lora_A" in n)
