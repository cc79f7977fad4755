"""HFModel: a safetensors folder streams layer by layer and matches the whole-model path bit for bit."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from model_checks import same_state

from qerl.models import HFModel, LoadError, ModelNotFoundError, RandomInit


def test_streamed_equals_whole_load_and_the_source_model(tiny_hf_folder):
    loader = HFModel(tiny_hf_folder)
    streamed, tokenizer = loader.load("NF4")
    assert loader.last_report.mode == "streamed" and loader.last_report.quantized_layers == 14
    whole, _ = HFModel(tiny_hf_folder, stream=False).load("NF4")
    direct, _ = RandomInit("tiny").load("NF4")  # the folder was written from RandomInit("tiny", seed=0)
    assert same_state(streamed, whole) and same_state(streamed, direct)
    assert streamed.lm_head.weight is streamed.model.embed_tokens.weight  # tied embeddings survive streaming
    ids = tokenizer("12 + 35 =", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(streamed(**ids).logits, whole(**ids).logits)


def test_dense_load_keeps_the_saved_weights(tiny_hf_folder):
    model, _ = HFModel(tiny_hf_folder).load()
    source, _ = RandomInit("tiny").load()
    assert same_state(model, source)


def test_untied_llama_streams(tmp_path):
    model, tokenizer = RandomInit({"model_type": "llama", "tie_word_embeddings": False}, stream=False).load()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    streamed, _ = HFModel(str(tmp_path)).load("MXFP4")
    whole, _ = HFModel(str(tmp_path), stream=False).load("MXFP4")
    assert type(streamed).__name__ == "LlamaForCausalLM" and same_state(streamed, whole)
    assert torch.equal(streamed.lm_head.weight, model.lm_head.weight)


def test_bad_folders_are_explained(tiny_hf_folder, tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        HFModel(str(tmp_path)).load()
    broken = tmp_path / "broken"
    shutil.copytree(tiny_hf_folder, broken)
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] = 192
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match=r"model.layers.0.mlp.gate_proj.weight' has shape \(128, 64\).*\(192, 64\)"):
        HFModel(str(broken)).load("NVFP4")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises((LoadError, ModelNotFoundError), match="no-such-org/no-such-model"):
        HFModel("no-such-org/no-such-model").load()
    assert not os.path.exists("no-such-org")
