"""LoRA through peft on a quantized base: what trains, bad targets, learning, and the saved adapter."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from qerl.lora.apply import LoraTargetError, apply_lora, trainable_parameter_names
from qerl.quantizers import MXFP4, NF4, NVFP4, QuantLinear

FORMATS = [NVFP4(), MXFP4(), NF4(double_quant=True)]


def _randomize_lora(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def test_only_lora_and_asked_norms_train(make_tiny_llama):
    model = apply_lora(NVFP4().quantize_model(make_tiny_llama()), rank=4, alpha=8)
    names = trainable_parameter_names(model)
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert len(names) == 2 * 7 * 2  # A and B, 7 targets, 2 layers
    wrapped = [m for m in model.modules() if type(m).__name__ == "QuantLoraLinear"]
    assert len(wrapped) == 14 and all(isinstance(m.base_layer, QuantLinear) for m in wrapped)
    assert type(model.get_submodule("base_model.model.model.layers.0.mlp.down_proj")).__name__ == "QuantLoraLinear"

    with_norms = apply_lora(NVFP4().quantize_model(make_tiny_llama()), rank=4, train_norms=True)
    extra = set(trainable_parameter_names(with_norms)) - set(names)
    assert extra and all("norm" in n for n in extra)
    assert len(extra) == 2 * 2 + 1  # input/post-attention norms per layer + final norm


def test_unknown_target_is_named(make_tiny_llama):
    model = NVFP4().quantize_model(make_tiny_llama())
    with pytest.raises(LoraTargetError, match=r"'qkv_proj' matches no module.*q_proj"):
        apply_lora(model, targets=("q_proj", "qkv_proj"))


def test_merge_onto_4bit_base_is_refused(make_tiny_llama):
    model = apply_lora(MXFP4().quantize_model(make_tiny_llama()), rank=2)
    with pytest.raises(NotImplementedError, match="qerl export --merge"):
        model.merge_adapter()


@pytest.mark.parametrize("quantizer", FORMATS, ids=lambda q: type(q).__name__)
def test_lora_learns_through_each_format(quantizer, make_tiny_llama):
    torch.manual_seed(0)
    model = apply_lora(quantizer.quantize_model(make_tiny_llama(vocab=32)), rank=8, alpha=64)
    model.train()
    data = torch.arange(24).reshape(2, 12) % 32  # a fixed sequence to memorise
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(20):
        loss = model(input_ids=data, labels=data).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]  # measured: 3.48 -> 2.33 for every format
    assert sum(losses[-5:]) < sum(losses[:5]) * 0.8
    base_grads = [b.grad for m in model.modules() if isinstance(m, QuantLinear) for b in m.buffers()]
    assert all(g is None for g in base_grads)


def test_saved_adapter_reproduces_the_lora_delta_on_the_bf16_base(make_tiny_llama, tmp_path):
    from peft import PeftModel

    quantized = apply_lora(NVFP4().quantize_model(make_tiny_llama()), rank=4, alpha=8)
    _randomize_lora(quantized)
    quantized.save_pretrained(tmp_path)
    config = (tmp_path / "adapter_config.json").read_text()
    assert "QuantLora" not in config and "custom" not in config.lower()

    plain = make_tiny_llama()  # the same seed: the bf16 weights the quantized model came from
    loaded = PeftModel.from_pretrained(plain, tmp_path)
    x = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        q_lora = quantized(input_ids=x).logits
        with quantized.disable_adapter():
            q_base = quantized(input_ids=x).logits
        b_lora = loaded(input_ids=x).logits
        with loaded.disable_adapter():
            b_base = loaded(input_ids=x).logits
    delta_q, delta_b = q_lora - q_base, b_lora - b_base
    assert delta_b.norm() > 0.05 * b_base.norm()  # the adapter does something
    # the model is non-linear around two slightly different bases: deltas agree to ~14% (measured 0.136)
    assert ((delta_q - delta_b).norm() / delta_b.norm()).item() < 0.2

    # on a bf16 model holding the dequantized weights, the loaded adapter reproduces the quantized model exactly
    dense = make_tiny_llama()
    with torch.no_grad():
        for name, module in quantized.base_model.model.named_modules():
            if isinstance(module, QuantLinear):
                dense.get_submodule(name.removesuffix(".base_layer")).weight.copy_(module.dequantize(torch.float32))
    dense_lora = PeftModel.from_pretrained(dense, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(dense_lora(input_ids=x).logits, q_lora, rtol=1e-5, atol=1e-5)

    # per layer the delta is exactly the same linear map: B(A(x)) * scaling
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        lq = quantized.base_model.model.get_submodule(name)
        lb = loaded.base_model.model.get_submodule(name)
        h = torch.randn(3, lq.in_features)
        with torch.no_grad():
            dq = lq(h) - lq.base_layer(h)
            db = lb(h) - lb.base_layer(h)
        torch.testing.assert_close(dq, db, rtol=1e-5, atol=1e-6)


def test_reference_policy_is_the_base_even_when_norms_train(make_tiny_llama):
    from qerl.lora.apply import base_weight_snapshot, reference_policy

    torch.manual_seed(0)
    base = NVFP4().quantize_model(make_tiny_llama())
    ids = torch.randint(0, base.config.vocab_size, (2, 7))
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits.clone()
    model = apply_lora(base, rank=4, train_norms=True)
    snapshot = base_weight_snapshot(model)
    assert snapshot and all("norm" in n for n in snapshot)
    _randomize_lora(model)
    with torch.no_grad():  # "training" moved the norms too
        for name, p in model.named_parameters():
            if name in snapshot:
                p.mul_(1.0 + 0.1 * torch.rand(p.shape))
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        policy_logits = model(input_ids=ids).logits
        with model.disable_adapter():  # adapters off alone still sees the trained norms
            adapters_off = model(input_ids=ids).logits
        with reference_policy(model, snapshot):
            reference = model(input_ids=ids).logits
    assert (policy_logits - base_logits).abs().max() > 1e-3
    assert (adapters_off - base_logits).abs().max() > 1e-3
    assert torch.equal(reference, base_logits)
    for name, p in model.named_parameters():  # trained values back, bit for bit, and still the same Parameters
        if name in trained:
            assert torch.equal(p.detach(), trained[name]) and p.requires_grad
