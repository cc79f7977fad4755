"""`qerl quantize`: writes a checkpoint that reloads bit-exactly, prints sizes and per-layer errors, explains bad input."""
from __future__ import annotations

import json
import os

import torch
from model_checks import same_state

from qerl.cli import main
from qerl.models import RandomInit


def test_quantize_preset_writes_a_reloadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "nvfp4"
    assert main(["quantize", "--model", "tiny", "--quantizer", "NVFP4", "--output", str(out), "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in printed and "rel. error" in printed and "mode: streamed" in printed
    assert {"model.safetensors", "qerl_quantization.json", "config.json", "tokenizer.json",
            "quantize_report.json"} <= set(os.listdir(out))
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["quantized_layers"] == 14 and len(report["layer_errors"]) == 14
    assert report["final_bytes"] < report["dense_bytes"]

    from transformers import AutoConfig, AutoModelForCausalLM

    from qerl.quantizers.checkpoint import load_quantized

    skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out), dtype=torch.bfloat16)
    reloaded = load_quantized(skeleton, out, expect_format="nvfp4")
    reloaded.tie_weights()
    expected, _ = RandomInit("tiny", seed=1).load("NVFP4")
    assert same_state(reloaded, expected)


def test_quantize_hf_folder_to_compressed_tensors(tiny_hf_folder, tmp_path, capsys):
    out = tmp_path / "ct"
    assert main(["quantize", "--model", tiny_hf_folder, "--quantizer", "nvfp4", "--output", str(out),
                 "--format", "compressed-tensors", "--skip", "lm_head", "o_proj"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["format"] == "nvfp4-pack-quantized"
    assert "model.layers.0.self_attn.o_proj" in config["quantization_config"]["ignore"]
    assert "12 layers quantized" in capsys.readouterr().out


def test_preset_overrides(tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", "--model", "qwen2.5-0.5b", "--set", "num_hidden_layers=1", "vocab_size=512",
                 "hidden_size=128", "intermediate_size=256", "num_attention_heads=2", "--quantizer", "MXFP4",
                 "--output", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1


def test_bad_input_is_explained(tmp_path, capsys):
    out = str(tmp_path / "x")
    assert main(["quantize", "--model", "tiny", "--quantizer", "NVPF4", "--output", out]) == 2
    assert "Did you mean NVFP4" in capsys.readouterr().err
    assert main(["quantize", "--model", "tiny", "--quantizer", "NF4", "--output", out,
                 "--format", "compressed-tensors"]) == 2
    assert "writes NVFP4 only" in capsys.readouterr().err
    assert main(["quantize", "--model", "nowhere/model", "--quantizer", "NF4", "--output", out]) == 2
    assert "not a file or folder here, nor a preset" in capsys.readouterr().err
    assert main(["quantize", "--model", "tiny", "--set", "hidden_size=100", "--quantizer", "NF4", "--output", out]) == 2
    err = capsys.readouterr().err
    assert "in_features=100 is not a multiple of the block size 64" in err and "model.layers.0" in err
    assert not os.path.exists(out)
