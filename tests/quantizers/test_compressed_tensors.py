"""NVFP4 export in the compressed-tensors `nvfp4-pack-quantized` layout, checked with the package itself."""
from __future__ import annotations

import json

import pytest
import torch

from qerl.quantizers import MXFP4, NVFP4
from qerl.quantizers.compressed_tensors import ExportError, export_compressed_tensors

ct = pytest.importorskip("compressed_tensors")


def _export(make_tiny_llama, tmp_path):
    model = NVFP4().quantize_model(make_tiny_llama(seed=3).to(torch.bfloat16), skip=("down_proj",))
    export_compressed_tensors(model, tmp_path)
    from safetensors.torch import load_file

    return model, load_file(tmp_path / "model.safetensors"), json.loads((tmp_path / "config.json").read_text())


def test_layout_and_config_parse_with_compressed_tensors(make_tiny_llama, tmp_path):
    from compressed_tensors.quantization import QuantizationConfig

    model, tensors, config = _export(make_tiny_llama, tmp_path)
    name = "model.layers.0.self_attn.q_proj"
    assert tensors[f"{name}.weight_packed"].dtype == torch.uint8 and tensors[f"{name}.weight_packed"].shape == (64, 32)
    assert tensors[f"{name}.weight_scale"].dtype == torch.float8_e4m3fn and tensors[f"{name}.weight_scale"].shape == (64, 4)
    assert tensors[f"{name}.weight_global_scale"].dtype == torch.float32 and tensors[f"{name}.weight_global_scale"].shape == (1,)
    amax = model.get_submodule(name).global_scale * (6 * 448)
    assert tensors[f"{name}.weight_global_scale"].item() == pytest.approx((6 * 448 / amax).item(), rel=1e-6)
    assert f"{name}.weight" not in tensors and "model.layers.0.mlp.down_proj.weight" in tensors
    qc = QuantizationConfig.model_validate(config["quantization_config"])
    assert qc.format == "nvfp4-pack-quantized" and qc.quant_method == "compressed-tensors"
    assert qc.config_groups["group_0"].weights.group_size == 16
    assert set(qc.ignore) == {"lm_head", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}
    assert config["model_type"] == "llama"


def test_compressed_tensors_decompresses_to_our_dequantization(make_tiny_llama, tmp_path):
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import preset_name_to_scheme

    model, tensors, _ = _export(make_tiny_llama, tmp_path)
    scheme = preset_name_to_scheme("NVFP4A16", ["Linear"])
    checked = 0
    for name, layer in model.named_modules():
        if not hasattr(layer, "global_scale"):
            continue
        local = {k: tensors[f"{name}.{k}"] for k in ("weight_packed", "weight_scale", "weight_global_scale")}
        theirs = NVFP4PackedCompressor.decompress(local, scheme)["weight"]  # bf16 math inside the package
        ours = layer.dequantize(torch.bfloat16)
        assert theirs.dtype == torch.bfloat16 and theirs.shape == ours.shape
        # they compute weight_scale / weight_global_scale in bf16, we scale * global in fp32: by construction at
        # most one bf16 rounding step apart; on this data every weight is bit-identical
        torch.testing.assert_close(theirs.float(), ours.float(), rtol=2 ** -7, atol=0)
        assert torch.equal(theirs, ours)
        checked += 1
    assert checked == 12


def test_mxfp4_exports_in_the_layout_compressed_tensors_decompresses(make_tiny_llama, tmp_path):
    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme

    model = MXFP4().quantize_model(make_tiny_llama(seed=4).to(torch.bfloat16))
    export_compressed_tensors(model, tmp_path)
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "model.safetensors")
    config = json.loads((tmp_path / "config.json").read_text())
    qc = QuantizationConfig.model_validate(config["quantization_config"])
    assert qc.format == "mxfp4-pack-quantized" and qc.config_groups["group_0"].weights.group_size == 32
    scheme = preset_name_to_scheme("MXFP4A16", ["Linear"])
    checked = 0
    for name, layer in model.named_modules():
        if getattr(layer, "format", None) != "mxfp4":
            continue
        assert f"{name}.weight_global_scale" not in tensors
        local = {k: tensors[f"{name}.{k}"] for k in ("weight_packed", "weight_scale")}
        assert local["weight_scale"].dtype == torch.uint8
        theirs = MXFP4PackedCompressor.decompress(local, scheme)["weight"]
        assert torch.equal(theirs.to(torch.bfloat16), layer.dequantize(torch.bfloat16))  # powers of two: exact
        checked += 1
    assert checked == 14


def test_nf4_does_not_export(make_tiny_llama, tmp_path):
    from qerl.quantizers import NF4

    with pytest.raises(ExportError, match="nf4"):
        export_compressed_tensors(NF4().quantize_model(make_tiny_llama()), tmp_path)
