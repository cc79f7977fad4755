"""Proof that AQN lands where the method says, on a quantized (NVFP4) base with LoRA on top.

RMSNorm_noisy(x) = (w + Z) * x / rms(x), so the inputs of q/k/v (after input_layernorm)
and of gate/up (after post_attention_layernorm) are the clean norm output scaled by
(w + Z) / w per channel; o_proj and down_proj have no norm in front of them and are
touched only through what flows into them. No parameter other than the targeted norm
weights changes - not the 4-bit codes and scales, not the LoRA matrices.
"""
from __future__ import annotations

import pytest
import torch

from qerl.noise import noisy_norms

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NORMS = ("input_layernorm", "post_attention_layernorm")
FEEDS = {"input_layernorm": ("q_proj", "k_proj", "v_proj"), "post_attention_layernorm": ("gate_proj", "up_proj")}


@pytest.fixture
def quantized_lora_llama(make_llama):
    from qerl.lora.apply import apply_lora
    from qerl.quantizers import NVFP4

    model = NVFP4().quantize_model(make_llama(dtype=torch.float32))
    model = apply_lora(model, rank=4, alpha=8.0, targets=PROJ)
    with torch.no_grad():  # LoRA B starts at zero; give the adapters a real contribution
        generator = torch.Generator().manual_seed(5)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


def layers_of(model):
    return model.get_base_model().model.layers


def capture(model, tokens) -> dict[str, torch.Tensor]:
    """Inputs of every norm and projection (and the QuantLinear under each LoRA wrapper), per layer."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(layers_of(model)):
        for name, module in layer.named_modules():
            short = name.rsplit(".", 1)[-1]
            if short in NORMS + PROJ or name.endswith("base_layer"):
                key = f"{i}.{name}"
                handles.append(module.register_forward_pre_hook(lambda m, args, key=key: seen.__setitem__(key, args[0].detach().clone())))
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def proj_key(layer: int, proj: str) -> str:
    return f"{layer}.{'self_attn' if proj in ('q_proj', 'k_proj', 'v_proj', 'o_proj') else 'mlp'}.{proj}"


def test_only_the_targeted_norm_weights_change(quantized_lora_llama, tokens, snapshot_of, changed_since):
    model = quantized_lora_llama
    before = snapshot_of(model)
    assert any(k.endswith(".codes") for k in before) and any("lora_A" in k for k in before)
    with noisy_norms(model, 2e-2, seed=0):
        moved = changed_since(model, before)
    expected = sorted(f"param:base_model.model.model.layers.{i}.{n}.weight" for i in range(2) for n in NORMS)
    assert moved == expected
    assert changed_since(model, before) == []


def test_logits_of_the_quantized_lora_model_change_only_with_sigma(quantized_lora_llama, tokens):
    model = quantized_lora_llama
    with torch.no_grad():
        clean = model(tokens).logits
        with noisy_norms(model, 0.0, seed=0):
            zero = model(tokens).logits
        with noisy_norms(model, 1e-2, seed=0):
            noisy = model(tokens).logits
        after = model(tokens).logits
    assert torch.equal(zero, clean) and torch.equal(after, clean)
    assert (noisy - clean).abs().max().item() > 1e-4


def test_qkv_and_gate_up_inputs_are_scaled_channel_wise(quantized_lora_llama, tokens):
    model = quantized_lora_llama
    clean = capture(model, tokens)
    with noisy_norms(model, 5e-2, seed=1) as applied:
        noisy = capture(model, tokens)
        noisy_w = {f"{i}.{n}": getattr(layer, n).weight.detach().clone()
                   for i, layer in enumerate(layers_of(model)) for n in NORMS}
    for i, layer in enumerate(layers_of(model)):
        for norm, projs in FEEDS.items():
            module = getattr(layer, norm)
            clean_w = module.weight.detach()
            z = applied[f"base_model.model.model.layers.{i}.{norm}"]
            assert torch.allclose(noisy_w[f"{i}.{norm}"] - clean_w, z, atol=1e-6)
            factor = noisy_w[f"{i}.{norm}"] / clean_w  # (w + Z) / w, one number per channel
            assert (factor - 1).abs().max().item() > 1e-2
            with torch.no_grad():  # the clean norm applied to the hidden state the noisy run fed it
                clean_out = module(noisy[f"{i}.{norm}"])
            for proj in projs:
                seen = noisy[proj_key(i, proj)]
                assert torch.allclose(seen, clean_out * factor, rtol=1e-5, atol=1e-6), (i, proj)
                assert torch.equal(noisy[proj_key(i, proj) + ".base_layer"], seen)  # the 4-bit layer sees it too
    # layer 0's input_layernorm reads the (noise-free) embeddings: q/k/v inputs are the clean ones, scaled
    assert torch.equal(noisy["0.input_layernorm"], clean["0.input_layernorm"])
    factor = noisy_w["0.input_layernorm"] / layers_of(model)[0].input_layernorm.weight.detach()
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert torch.allclose(noisy[proj_key(0, proj)], clean[proj_key(0, proj)] * factor, rtol=1e-5, atol=1e-6)


def test_o_and_down_get_no_noise_of_their_own(quantized_lora_llama, tokens):
    model = quantized_lora_llama
    clean = capture(model, tokens)
    # noise only after attention: layer 0's attention path is untouched, so o_proj sees exactly its clean input
    with noisy_norms(model, 5e-2, seed=2, targets="post_attention_layernorm") as applied:
        noisy = capture(model, tokens)
        w = layers_of(model)[0].post_attention_layernorm.weight.detach().clone()
    factor = w / layers_of(model)[0].post_attention_layernorm.weight.detach()
    assert torch.equal(noisy[proj_key(0, "o_proj")], clean[proj_key(0, "o_proj")])
    for proj in ("gate_proj", "up_proj"):
        assert torch.allclose(noisy[proj_key(0, proj)], clean[proj_key(0, proj)] * factor, rtol=1e-5, atol=1e-6)
    # down_proj's input changes only as act(gate(x')) * up(x') of the scaled x' - no per-channel factor of its own
    mlp = layers_of(model)[0].mlp
    with torch.no_grad():
        rebuilt = mlp.act_fn(mlp.gate_proj(noisy[proj_key(0, "gate_proj")])) * mlp.up_proj(noisy[proj_key(0, "up_proj")])
    assert torch.allclose(noisy[proj_key(0, "down_proj")], rebuilt, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(noisy[proj_key(0, "down_proj")], clean[proj_key(0, "down_proj")], rtol=1e-3)
    assert len(applied) == 2  # one Z per layer, post_attention_layernorm only


def test_noise_reaches_the_hf_rollout_backend(quantized_lora_llama, word_tokenizer, snapshot_of, changed_since):
    from qerl.rollout import HF
    from qerl.types import SamplingConfig

    backend = HF(max_batch_rows=8)
    backend.setup(quantized_lora_llama, word_tokenizer)
    prompts = [[5, 17, 33, 9], [40, 41]]
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=3, seed=4)
    before = snapshot_of(quantized_lora_llama)
    clean = backend.generate(prompts, sampling)
    with backend.noise(0.0, seed=0):
        zero = backend.generate(prompts, sampling)
    with backend.noise(5e-2, seed=0):
        noisy = backend.generate(prompts, sampling)
    assert changed_since(quantized_lora_llama, before) == []  # so the next rollout is the clean one again
    assert torch.equal(zero.completion_ids, clean.completion_ids) and torch.equal(zero.logprobs, clean.logprobs)
    first = clean.completion_mask[:, 0].bool()  # the first sampled token's log-prob is computed by the noisy model
    assert not torch.equal(noisy.logprobs[:, 0][first], clean.logprobs[:, 0][first])
