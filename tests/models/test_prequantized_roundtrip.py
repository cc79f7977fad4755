"""qerl's compressed-tensors export loads back bit for bit; a loaded folder is re-exported without drift; the VLLM
backend serves the loaded folder itself while nothing changed."""
from __future__ import annotations

import json

import pytest
import torch
from ct_checkpoints import write_ct_checkpoint
from model_checks import same_state
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from qerl.cli import main
from qerl.models import HFModel, RandomInit
from qerl.quantizers.compressed_tensors import GLOBAL_SCALES_METADATA
from qerl.quantizers.layers import QuantLinear

SKIP = ("lm_head", "down_proj")


def _drifting_layers(model) -> int:
    """NVFP4 layers whose global scale g does not survive float32 1 / (1 / g) (the divisor compressed-tensors stores)."""
    return sum(not torch.equal(torch.reciprocal(torch.reciprocal(m.global_scale)), m.global_scale)
               for m in model.modules() if isinstance(m, QuantLinear))


def test_qerl_export_loads_back_bit_for_bit(tmp_path, capsys):
    out = tmp_path / "ct"
    assert main(["quantize", "--model", "tiny", "--seed", "3", "--quantizer", "NVFP4", "--output", str(out),
                 "--format", "compressed-tensors", "--skip", *SKIP]) == 0
    capsys.readouterr()
    original, tokenizer = RandomInit("tiny", seed=3).load("NVFP4", skip=SKIP)
    loader = HFModel(str(out))
    loaded, _ = loader.load("NVFP4")
    assert loader.last_report.mode == "pre-quantized" and loader.last_report.quantized_layers == 12
    assert same_state(loaded, original)  # codes, scales, global scales, dense parts: every bit
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = tokenizer("12 + 35 =", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(loaded(**ids).logits, original(**ids).logits)
    # the header's exact scales are what make it exact: without them g = 1/d, and float32 1/(1/g) != g sometimes
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert len(json.loads(f.metadata()[GLOBAL_SCALES_METADATA])) == 12
    save_file(load_file(out / "model.safetensors"), out / "model.safetensors", metadata={"format": "pt"})
    bare, _ = HFModel(str(out)).load("NVFP4")
    differ = sum(not torch.equal(a.global_scale, b.global_scale) for a, b in zip(
        [m for m in bare.modules() if isinstance(m, QuantLinear)], [m for m in original.modules()
                                                                    if isinstance(m, QuantLinear)]))
    assert differ == _drifting_layers(original)
    print(f"layers whose g reloads exactly only with the header: {differ} of 12")


def test_library_folder_reexports_without_drift(tmp_path, capsys):
    pytest.importorskip("compressed_tensors")
    _, folder = write_ct_checkpoint(tmp_path / "lib", "NVFP4A16", seed=1)
    for fmt in ("compressed-tensors", "qerl"):
        assert main(["quantize", "--model", str(folder), "--quantizer", "NVFP4", "--output", str(tmp_path / fmt),
                     "--format", fmt]) == 0
    printed = capsys.readouterr().out
    assert "mode: pre-quantized" in printed and "12 layers quantized" in printed
    first, second = load_file(folder / "model.safetensors"), load_file(tmp_path / "compressed-tensors" /
                                                                       "model.safetensors")
    assert sorted(first) == sorted(second)
    same_divisor = 0
    for key, tensor in first.items():
        if key.endswith("weight_global_scale"):
            # compressed-tensors' divisor d goes through qerl's g = 1/d and back: equal or 1 float32 ulp apart
            assert torch.allclose(second[key], tensor, rtol=2**-23, atol=0)
            same_divisor += int(torch.equal(second[key], tensor))
        else:
            assert torch.equal(second[key].view(torch.uint8), tensor.view(torch.uint8)), key
    assert same_divisor >= 6  # float32 1/(1/d) == d for most divisors (86% on random amax)
    print(f"global scale divisors reproduced exactly: {same_divisor} of 12")
    loaded, _ = HFModel(str(folder)).load("NVFP4")
    again, _ = HFModel(str(tmp_path / "compressed-tensors")).load("NVFP4")
    assert same_state(loaded, again)  # and qerl's own re-export reloads to the very same model

    from transformers import AutoConfig, AutoModelForCausalLM

    from qerl.quantizers.checkpoint import load_quantized

    skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path / "qerl"), dtype=torch.bfloat16)
    assert same_state(load_quantized(skeleton, tmp_path / "qerl", expect_format="nvfp4"), loaded)


def test_vllm_serves_the_loaded_folder_until_the_base_changes(tmp_path):
    pytest.importorskip("compressed_tensors")
    from qerl.lora.apply import apply_lora
    from qerl.rollout.vllm.engine import unchanged_source_folder

    _, folder = write_ct_checkpoint(tmp_path / "lib", "NVFP4A16", seed=2)
    model, _ = HFModel(str(folder)).load("NVFP4", dtype="float32")
    policy = apply_lora(model, rank=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj", "gate_proj"),
                        train_norms=True)
    from qerl.models.logprobs import causal_lm

    lm = causal_lm(policy)
    assert unchanged_source_folder(lm) == str(folder.resolve())  # LoRA injected, norms trainable: base unchanged
    with torch.no_grad():
        lm.model.norm.weight.mul_(1.5)  # a trained norm is a changed base
    assert unchanged_source_folder(lm) is None
    with torch.no_grad():
        lm.model.norm.weight.div_(1.5)
    assert unchanged_source_folder(lm) == str(folder.resolve())
    codes = lm.model.layers[0].self_attn.q_proj.base_layer.codes
    codes[0, 0] ^= 1  # one flipped bit of one packed code
    assert unchanged_source_folder(lm) is None
    codes[0, 0] ^= 1
    assert unchanged_source_folder(lm) == str(folder.resolve())
    (folder / "config.json").write_text((folder / "config.json").read_text() + "\n")  # the folder was rewritten
    assert unchanged_source_folder(lm) is None
    fresh, _ = RandomInit({"model_type": "llama", "tie_word_embeddings": False}).load("NVFP4")
    assert unchanged_source_folder(fresh) is None  # not loaded from a folder: exported as before


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_engine_starts_from_the_folder_on_gpu(tmp_path):
    """On CUDA the VLLM backend hands the pre-quantized folder to vLLM without writing a scratch copy."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("vllm")
    from qerl.lora.apply import apply_lora
    from qerl.rollout.vllm import VLLM
    from qerl.types import SamplingConfig

    folder = tmp_path / "ct"  # written by qerl (no compressed-tensors version needed on the GPU machine)
    assert main(["quantize", "--model", "tiny", "--set", "hidden_size=256", "intermediate_size=512",
                 "--quantizer", "NVFP4", "--format", "compressed-tensors", "--output", str(folder)]) == 0
    model, tokenizer = HFModel(str(folder)).load("NVFP4", device="cuda")
    policy = apply_lora(model, rank=8, alpha=16, dropout=0.0, targets=("q_proj", "v_proj"), train_norms=False)
    backend = VLLM(gpu_memory_utilization=0.2, max_model_len=128, enforce_eager=True)
    try:
        backend.setup(policy, tokenizer)
        assert backend.model_dir is None  # nothing exported
        rollout = backend.generate([tokenizer("12 + 35 =")["input_ids"]], SamplingConfig(n=2, max_new_tokens=4, seed=0))
        assert rollout.completion_ids.shape[0] == 2
    finally:
        backend.close()
    assert (folder / "model.safetensors").is_file()  # the user's folder is never deleted
