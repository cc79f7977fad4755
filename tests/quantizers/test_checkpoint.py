"""Quantized checkpoints: safetensors + manifest round trip, refusal of other formats/versions."""
from __future__ import annotations

import json

import pytest
import torch

from qerl.quantizers import MXFP4, NF4, NVFP4, QuantLinear
from qerl.quantizers.checkpoint import (
    MANIFEST_FILE,
    QuantCheckpointError,
    load_quantized,
    read_manifest,
    save_quantized,
)


@pytest.mark.parametrize("quantizer", [NVFP4(), MXFP4(rounding="ceil"), NF4(), NF4(double_quant=True)],
                         ids=lambda q: type(q).__name__ + str(vars(q)))
def test_round_trip_is_bit_identical(quantizer, make_tiny_llama, tmp_path):
    model = quantizer.quantize_model(make_tiny_llama(seed=1).to(torch.bfloat16), skip=("o_proj",))
    save_quantized(model, tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["format"] == "qerl-quantized" and manifest["version"] == 1
    assert manifest["quant_formats"] == [quantizer.format] and len(manifest["layers"]) == 12
    assert (tmp_path / "config.json").is_file()

    fresh = make_tiny_llama(seed=2).to(torch.bfloat16)  # same architecture, other weights
    load_quantized(fresh, tmp_path, expect_format=quantizer.format)
    before, after = model.state_dict(), fresh.state_dict()
    assert set(before) == set(after)
    for key in before:
        assert before[key].dtype == after[key].dtype, key
        assert torch.equal(before[key].view(torch.uint8) if before[key].element_size() == 1 else before[key],
                           after[key].view(torch.uint8) if after[key].element_size() == 1 else after[key]), key
    assert isinstance(fresh.model.layers[0].self_attn.q_proj, QuantLinear)
    assert not isinstance(fresh.model.layers[0].self_attn.o_proj, QuantLinear)
    x = torch.randint(0, 96, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(x).logits, fresh(x).logits)


def test_skeleton_from_the_saved_config_loads_and_meta_is_refused(make_tiny_llama, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = NVFP4().quantize_model(make_tiny_llama().to(torch.bfloat16))
    save_quantized(model, tmp_path)
    skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path), dtype=torch.bfloat16)
    load_quantized(skeleton, tmp_path)
    loaded = skeleton.state_dict()
    assert all(torch.equal(v.float(), loaded[k].float()) for k, v in model.state_dict().items())
    x = torch.randint(0, 96, (1, 8))
    with torch.no_grad():  # not bit-equal: `.to(bfloat16)` also cast the original's rotary inv_freq buffer
        torch.testing.assert_close(model(x).logits, skeleton(x).logits, rtol=0.02, atol=0.02)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path), dtype=torch.bfloat16)
    with pytest.raises(QuantCheckpointError, match="meta device"):
        load_quantized(meta, tmp_path)


def test_wrong_version_or_format_is_refused(make_tiny_llama, tmp_path):
    save_quantized(NVFP4().quantize_model(make_tiny_llama()), tmp_path)
    with pytest.raises(QuantCheckpointError, match=r"holds \['nvfp4'\] weights, but 'nf4' was asked for"):
        load_quantized(make_tiny_llama(), tmp_path, expect_format="nf4")
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(QuantCheckpointError, match=r"version 99, but this qerl reads format 'qerl-quantized' version 1"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({**manifest, "format": "gptq"}))
    with pytest.raises(QuantCheckpointError, match="checkpoint format 'gptq'"):
        load_quantized(make_tiny_llama(), tmp_path)


def test_missing_or_mismatched_checkpoint_is_explained(make_tiny_llama, tmp_path):
    with pytest.raises(QuantCheckpointError, match="is not a qerl quantized checkpoint"):
        load_quantized(make_tiny_llama(), tmp_path)
    with pytest.raises(QuantCheckpointError, match="has no QuantLinear layer"):
        save_quantized(make_tiny_llama(), tmp_path)
    save_quantized(MXFP4().quantize_model(make_tiny_llama()), tmp_path)
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=96))
    with pytest.raises(QuantCheckpointError, match=r"layer 'model.layers.0.self_attn.q_proj' is \(64, 64\) in the checkpoint"):
        load_quantized(other, tmp_path)
