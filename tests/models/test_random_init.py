"""RandomInit: presets match the public Qwen2.5 shapes; streaming quantize-on-load is exact and holds one layer."""
from __future__ import annotations

import pytest
import torch
from model_checks import same_state

from qerl.models import PRESETS, LoadError, RandomInit, load_policy
from qerl.models.streaming import tensor_bytes
from qerl.quantizers import MXFP4, NF4, NVFP4

# hidden, intermediate, layers, heads, kv heads, vocab, tied (../shared/ENVIRONMENT.md)
QWEN25 = {
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "qwen2.5-3b": (2048, 11008, 36, 16, 2, 151936, True),
    "qwen2.5-7b": (3584, 18944, 28, 28, 4, 152064, False),
    "qwen2.5-14b": (5120, 13824, 48, 40, 8, 152064, False),
    "qwen2.5-32b": (5120, 27648, 64, 40, 8, 152064, False),
}
# a Qwen2.5-0.5B-like config scaled down (4 layers, small vocab): layers dominate, so streaming matters,
# and CPU tests stay quick
HALF_B = {"config": "qwen2.5-0.5b", "tokenizer": "bytes",
          "overrides": {"num_hidden_layers": 4, "vocab_size": 512, "hidden_size": 256, "intermediate_size": 1024,
                        "num_attention_heads": 4}}


@pytest.mark.parametrize("name", sorted(QWEN25))
def test_presets_match_public_qwen25_shapes(name):
    cfg = RandomInit(name).hf_config()
    got = (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
           cfg.num_key_value_heads, cfg.vocab_size, cfg.tie_word_embeddings)
    assert got == QWEN25[name]
    assert cfg.model_type == "qwen2" and cfg.rms_norm_eps == 1e-6 and cfg.hidden_act == "silu"


def test_7b_preset_has_7_6b_parameters_and_15_2_gb_in_bf16():
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(RandomInit("7b").hf_config(), dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    assert 7.60e9 < n < 7.63e9  # Qwen2.5-7B: 7.62 B
    assert tensor_bytes(model, include_meta=True) / 1e9 == pytest.approx(15.2, abs=0.1)  # REFERENCE.md: 15.2 GB
    assert model.model.layers[0].self_attn.q_proj.bias is not None  # q/k/v carry a bias


def test_tiny_is_a_small_tied_qwen2_with_a_byte_tokenizer_that_generates():
    model, tokenizer = RandomInit("tiny").load()
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (64, 2, 320)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.lm_head.weight is model.model.embed_tokens.weight
    assert len(tokenizer) == 259 and tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    text = "12 + 35 = 47, héllo"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           return_dict=True, return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 6) and int(out.max()) < cfg.vocab_size
    assert all(not p.is_meta for p in model.parameters()) and model.model.rotary_emb.inv_freq.is_meta is False


def test_weights_depend_only_on_seed():
    a, _ = RandomInit("tiny", seed=3).load()
    b, _ = RandomInit("tiny", seed=3, stream=False).load()
    c, _ = RandomInit("tiny", seed=4).load()
    assert same_state(a, b)
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, c.model.layers[0].mlp.up_proj.weight)
    w = a.model.layers[1].mlp.up_proj.weight.detach().float()
    assert abs(float(w.std()) - 0.02) < 0.002 and torch.equal(a.model.norm.weight, torch.ones(64, dtype=torch.bfloat16))


@pytest.mark.parametrize("quantizer", [NVFP4(), MXFP4(), NF4(double_quant=True)], ids=["nvfp4", "mxfp4", "nf4-dq"])
def test_streamed_equals_load_then_quantize_bit_exact(quantizer):
    streamed, _ = RandomInit(**HALF_B).load(quantizer)
    whole, _ = RandomInit(**HALF_B, stream=False).load(quantizer)
    assert same_state(streamed, whole)
    assert type(streamed.model.layers[3].mlp.down_proj).__name__ == "QuantLinear"
    assert type(streamed.lm_head).__name__ == "Linear"  # skipped by default


def test_streaming_holds_at_most_one_dense_layer():
    loader = RandomInit(**HALF_B)
    model, _ = loader.load(NVFP4())
    r = loader.last_report
    layer = model.model.layers[0]
    hidden, inter, kv = 256, 1024, 2 * 64
    layer_linear = hidden * hidden * 2 + 2 * hidden * kv + 3 * hidden * inter + hidden + 2 * kv  # + q/k/v bias
    layer_dense = 2 * (layer_linear + 2 * hidden)  # bf16, plus two norms
    assert r.mode == "streamed" and r.quantized_layers == 4 * 7
    assert r.peak_layer_dense_bytes == layer_dense
    assert r.dense_bytes == tensor_bytes(RandomInit(**HALF_B).load()[0])
    # resident at the peak = final model + one dense layer (its packed copy does not exist yet)
    assert r.peak_tensor_bytes <= r.final_bytes + layer_dense
    assert r.peak_tensor_bytes < 0.5 * r.dense_bytes
    assert tensor_bytes(layer) < layer_dense / 3  # 4.5 bits per weight
    whole = RandomInit(**HALF_B, stream=False)
    whole.load(NVFP4())
    assert whole.last_report.peak_tensor_bytes == r.dense_bytes and whole.last_report.final_bytes == r.final_bytes


def test_measured_errors_cover_every_quantized_layer():
    loader = RandomInit("tiny")
    loader.load("NF4", measure_errors=True, skip=("lm_head", "down_proj"))
    errors = loader.last_report.layer_errors
    assert sorted(errors) == sorted(f"model.layers.{i}.{p}" for i in range(2) for p in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj"))
    assert all(0.05 < e < 0.15 for e in errors.values())  # NF4 on Gaussian weights: ~0.09-0.10


def test_load_policy_and_float32():
    model, _ = load_policy(RandomInit("tiny"), quantizer="MXFP4", dtype=torch.float32)
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert model.model.layers[0].self_attn.q_proj.format == "mxfp4"


def test_bad_config_and_tokenizer_are_explained():
    with pytest.raises(LoadError, match="Unknown RandomInit config 'qwen9'.*qwen2.5-7b"):
        RandomInit("qwen9")
    with pytest.raises(LoadError, match="259 ids but vocab_size is 200"):
        RandomInit({"vocab_size": 200}).load()
    assert set(PRESETS) >= set(QWEN25) | {"tiny"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streaming_on_gpu_keeps_cuda_peak_near_the_final_size():
    # big enough that fixed costs (embeddings, allocator rounding, the quantizer's float32 temporaries of one
    # matrix) do not dominate: 16 layers, 488 MB dense, 138 MB packed, 30 MB per dense layer
    overrides = {**HALF_B["overrides"], "num_hidden_layers": 16, "hidden_size": 1024, "intermediate_size": 4096,
                 "num_attention_heads": 8, "num_key_value_heads": 2}
    loader = RandomInit(**{**HALF_B, "overrides": overrides})
    model, _ = loader.load(NVFP4(), device="cuda")
    r = loader.last_report
    assert model.model.layers[0].mlp.up_proj.codes.is_cuda
    assert r.peak_device_source.startswith("torch.cuda.max_memory_allocated")
    numbers = (f"peak {r.peak_device_bytes / 1e6:.0f} MB, final {r.final_bytes / 1e6:.0f} MB, dense "
               f"{r.dense_bytes / 1e6:.0f} MB, largest dense layer {r.peak_layer_dense_bytes / 1e6:.0f} MB")
    print(numbers)
    # streamed: the peak is the final size plus a few layers in flight, never a whole dense copy (16 layers).
    # The allocator's peak is counted above what the process held before the load: in a whole GPU suite a vLLM
    # engine's KV cache (30 GB) sat in the same process and made a peak of 30,525 MB (H200, 2026-12-02).
    assert r.peak_device_bytes < r.final_bytes + 6 * r.peak_layer_dense_bytes, numbers
