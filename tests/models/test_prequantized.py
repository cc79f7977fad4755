"""Pre-quantized compressed-tensors folders written by compressed-tensors' own compressor load as stored.

The folders come from `ct_checkpoints.write_ct_checkpoint` (apply_quantization_config + ModelCompressor +
save_pretrained, as llm-compressor saves) on a tiny random Llama: NVFP4A16 and MXFP4A16, down_proj and lm_head
ignored.
"""
from __future__ import annotations

import json

import pytest
import torch
from ct_checkpoints import write_ct_checkpoint
from safetensors.torch import load_file, save_file

from qerl.models import HFModel, LoadError
from qerl.quantizers.layers import QuantLinear

ct = pytest.importorskip("compressed_tensors")
PACKED = [f"model.layers.{i}.{p}" for i in range(2) for p in ("self_attn.q_proj", "self_attn.k_proj",
                                                               "self_attn.v_proj", "self_attn.o_proj",
                                                               "mlp.gate_proj", "mlp.up_proj")]


@pytest.fixture(scope="module")
def ct_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    return {preset: write_ct_checkpoint(root / preset, preset) for preset in ("NVFP4A16", "MXFP4A16")}


def _decompressed_model(source, folder, preset):
    """The bf16 model compressed-tensors itself decompresses the folder into (its own decompress, per layer)."""
    import copy

    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import preset_name_to_scheme

    compressor = NVFP4PackedCompressor if preset.startswith("NV") else MXFP4PackedCompressor
    tensors, scheme, model = load_file(folder / "model.safetensors"), preset_name_to_scheme(preset, ["Linear"]), copy.deepcopy(source)
    with torch.no_grad():
        for name in PACKED:
            local = {k.rpartition(".")[2]: v for k, v in tensors.items() if k.rpartition(".")[0] == name}
            model.get_submodule(name).weight.copy_(compressor.decompress(local, scheme)["weight"])
    return model


@pytest.mark.parametrize(("preset", "quantizer"), [("NVFP4A16", "NVFP4"), ("MXFP4A16", "MXFP4")])
def test_library_checkpoint_loads_bit_for_bit(ct_folders, preset, quantizer, monkeypatch):
    source, folder = ct_folders[preset]
    from qerl.quantizers.base import Quantizer

    def refuse(*args, **kwargs):
        raise AssertionError("a pre-quantized load must not quantize or dequantize")

    with monkeypatch.context() as patch:  # loading neither quantizes nor dequantizes anything
        patch.setattr(Quantizer, "quantize_model", refuse)
        patch.setattr(QuantLinear, "dequantize", refuse)
        loader = HFModel(str(folder))
        model, tokenizer = loader.load(quantizer, dtype="bfloat16")
    stored = load_file(folder / "model.safetensors")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert sorted(layers) == sorted(PACKED)
    for name, layer in layers.items():
        assert torch.equal(layer.codes, stored[f"{name}.weight_packed"])
        assert torch.equal(layer.scales.view(torch.uint8), stored[f"{name}.weight_scale"].view(torch.uint8))
        if quantizer == "NVFP4":
            assert torch.equal(layer.global_scale, torch.reciprocal(stored[f"{name}.weight_global_scale"]).reshape(()))
    for dense in ("model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "lm_head"):
        assert type(model.get_submodule(dense)) is torch.nn.Linear
        assert torch.equal(model.get_submodule(dense).weight, stored[f"{dense}.weight"])
    report = loader.last_report
    assert report.mode == "pre-quantized" and report.quantized_layers == 12
    # never more model tensors alive than the final (packed) model: no dense copy of a packed layer existed
    assert report.peak_tensor_bytes == report.final_bytes < report.dense_bytes
    # compressed-tensors' own decompression gives the same bf16 weights, hence the same logits, bit for bit
    reference = _decompressed_model(source, folder, preset)
    for name in PACKED:
        assert torch.equal(model.get_submodule(name).dequantize(torch.bfloat16), reference.get_submodule(name).weight)
    ids = tokenizer("12 + 35 =", return_tensors="pt")
    with torch.no_grad():
        ours, theirs = model(**ids).logits, reference(**ids).logits
    assert ours.numel() == 9 * 320 and torch.equal(ours, theirs)


def test_quantizer_must_agree_with_the_checkpoint(ct_folders):
    folder = str(ct_folders["NVFP4A16"][1])
    with pytest.raises(LoadError, match="holds pre-quantized NVFP4 weights .* no quantizer .*quantizer: NVFP4"):
        HFModel(folder).load()
    with pytest.raises(LoadError, match=r"holds NVFP4 weights \(nvfp4-pack-quantized, block 16\) but the quantizer "
                                        r"is MXFP4 \(mxfp4, block 32\)"):
        HFModel(folder).load("MXFP4")
    with pytest.raises(LoadError, match="the quantizer is NF4"):
        HFModel(folder).load("NF4")


def _copy(folder, tmp_path, config_edit=None, drop=None):
    import shutil

    target = tmp_path / "edited"
    shutil.copytree(folder, target)
    if config_edit is not None:
        config = json.loads((target / "config.json").read_text())
        config_edit(config)
        (target / "config.json").write_text(json.dumps(config))
    if drop is not None:
        tensors = load_file(target / "model.safetensors")
        del tensors[drop]
        save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return str(target)


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda c: c["quantization_config"]["config_groups"]["group_0"].update(
        input_activations={"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16}),
     "config_groups.group_0.input_activations is 'set' (activation quantization (W4A4) is not supported"),
    (lambda c: c["quantization_config"]["config_groups"]["group_0"].update(format="pack-quantized"),
     "config_groups.group_0.format is 'pack-quantized' (not a packed FP4 format)"),
    (lambda c: c["quantization_config"].update(quant_method="gptq"), "quant_method is 'gptq'"),
])
def test_unsupported_schemes_say_what_is_supported(ct_folders, tmp_path, edit, expected):
    folder = _copy(ct_folders["NVFP4A16"][1], tmp_path, config_edit=edit)
    with pytest.raises(LoadError) as exc_info:
        HFModel(folder).load("NVFP4")
    message = _one_line(exc_info)
    assert expected in message and "weight-only FP4: format nvfp4-pack-quantized (NVFP4A16)" in message


def _built(monkeypatch) -> list:
    """Records every QuantLinear constructed: a bad checkpoint must be refused before any is."""
    built = []
    original = QuantLinear.__init__

    def spy(self, *args, **kwargs):
        built.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(QuantLinear, "__init__", spy)
    return built


@pytest.mark.parametrize(("kind", "expected"), [
    ("missing scale", ("checkpoint tensor 'model.layers.1.mlp.up_proj.weight_scale' (nvfp4-pack-quantized needs "
                      "shape (128, 4)) is missing from model.safetensors")),
    ("missing global", "checkpoint tensor 'model.layers.0.self_attn.k_proj.weight_global_scale'"),
    ("shape", ("checkpoint tensor 'model.layers.0.mlp.gate_proj.weight_packed' has shape (128, 32) but config.json's "
              "Linear (192x64) needs (192, 32)")),
    ("ignored but packed", ("checkpoint tensor 'model.layers.0.self_attn.q_proj.weight_packed' is packed, but the "
                           "quantization_config ignores 'model.layers.0.self_attn.q_proj'")),
    ("missing dense", "checkpoint tensor 'model.layers.1.mlp.down_proj.weight' (shape (64, 128)) is missing"),
])
def test_partial_or_mismatched_checkpoints_name_the_tensor(ct_folders, tmp_path, monkeypatch, kind, expected):
    base = ct_folders["NVFP4A16"][1]
    folder = {
        "missing scale": lambda: _copy(base, tmp_path, drop="model.layers.1.mlp.up_proj.weight_scale"),
        "missing global": lambda: _copy(base, tmp_path, drop="model.layers.0.self_attn.k_proj.weight_global_scale"),
        "shape": lambda: _copy(base, tmp_path, config_edit=lambda c: c.update(intermediate_size=192)),
        "ignored but packed": lambda: _copy(base, tmp_path, config_edit=lambda c: c["quantization_config"][
            "ignore"].append("model.layers.0.self_attn.q_proj")),
        "missing dense": lambda: _copy(base, tmp_path, drop="model.layers.1.mlp.down_proj.weight"),
    }[kind]()
    built = _built(monkeypatch)
    with pytest.raises(LoadError) as exc_info:
        HFModel(folder).load("NVFP4")
    assert expected in _one_line(exc_info)
    assert built == []


def test_target_matching_agrees_with_compressed_tensors():
    from compressed_tensors.utils.match import is_match
    from ct_checkpoints import tiny_llama_and_tokenizer

    from qerl.quantizers.compressed_tensors_scheme import CompressedScheme

    model, _ = tiny_llama_and_tokenizer()
    cases = [(("Linear",), ("lm_head", "re:.*down_proj$", "model.layers.0.self_attn.q_proj")),
             (("re:.*mlp.*",), ("re:.*layers\\.1\\..*",)), (("model.layers.1.self_attn.o_proj", "LlamaMLP"), ())]
    for targets, ignore in cases:
        scheme = CompressedScheme("nvfp4-pack-quantized", "nvfp4", 16, targets, ignore)
        ours = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and scheme.quantizes(n, m)]
        theirs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and is_match(n, m, targets, ignore)]
        assert ours == theirs and ours, (targets, ours)
