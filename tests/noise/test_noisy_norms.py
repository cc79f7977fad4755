"""noisy_norms on tiny random-init models: what it perturbs, that it restores bit-exactly, and bad input."""
from __future__ import annotations

import pytest
import torch

from qerl.noise import noisy_norms, targeted_norms

DEFAULT_NORMS = [f"model.layers.{i}.{n}" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")]


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def test_default_targets_are_the_decoder_norms_only(llama):
    assert list(targeted_norms(llama)) == DEFAULT_NORMS  # final model.norm excluded


def test_logits_change_with_sigma_and_weights_come_back_bit_exact(llama, tokens, snapshot_of, changed_since):
    before, clean = snapshot_of(llama), logits(llama, tokens)
    with noisy_norms(llama, 1e-2, seed=0) as applied:
        noisy = logits(llama, tokens)
        assert changed_since(llama, before) == sorted(f"param:{n}.weight" for n in DEFAULT_NORMS)
    assert (noisy - clean).abs().max() > 1e-4
    assert changed_since(llama, before) == []
    assert torch.equal(logits(llama, tokens), clean)
    assert sorted(applied) == sorted(DEFAULT_NORMS) and all(z.shape == (64,) for z in applied.values())


def test_sigma_zero_touches_nothing(llama, tokens, snapshot_of, changed_since):
    before, clean = snapshot_of(llama), logits(llama, tokens)
    versions = {n: p._version for n, p in llama.named_parameters()}
    with noisy_norms(llama, 0.0, seed=0) as applied:
        assert torch.equal(logits(llama, tokens), clean)
        assert changed_since(llama, before) == []
    assert applied == {}
    assert versions == {n: p._version for n, p in llama.named_parameters()}  # not even written


def test_noise_is_per_channel_independent_per_layer_and_has_std_sigma(llama):
    with noisy_norms(llama, 0.05, seed=3) as applied:
        for name, z in applied.items():
            module = llama.get_submodule(name)
            assert module.weight.shape == z.shape
    vectors = torch.stack(list(applied.values()))
    assert len({tuple(v.tolist()) for v in vectors}) == 4  # one fresh vector per norm
    assert vectors.std().item() == pytest.approx(0.05, rel=0.15)  # 256 draws
    assert vectors.mean().abs().item() < 0.05 * 4 / 16  # 4 standard errors


def test_std_is_sigma_on_wide_norms():
    layer = torch.nn.Module()
    layer.input_layernorm, layer.post_attention_layernorm = torch.nn.RMSNorm(4096), torch.nn.RMSNorm(4096)
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([layer])
    with noisy_norms(model, 1e-3, seed=0) as applied:
        shift = model.layers[0].input_layernorm.weight - 1.0
    assert shift.std().item() == pytest.approx(1e-3, rel=0.05)
    assert torch.allclose(shift, applied["layers.0.input_layernorm"], atol=1e-7)
    assert torch.equal(model.layers[0].input_layernorm.weight, torch.ones(4096))


def test_same_seed_same_noise_other_seed_other_noise(llama, tokens):
    with noisy_norms(llama, 1e-2, seed=7):
        a = logits(llama, tokens)
    with noisy_norms(llama, 1e-2, seed=7):
        b = logits(llama, tokens)
    with noisy_norms(llama, 1e-2, generator=torch.Generator().manual_seed(7)):
        c = logits(llama, tokens)
    with noisy_norms(llama, 1e-2, seed=8):
        d = logits(llama, tokens)
    assert torch.equal(a, b) and torch.equal(a, c) and not torch.equal(a, d)


def test_restores_on_exception(llama, snapshot_of, changed_since):
    before = snapshot_of(llama)
    with pytest.raises(RuntimeError, match="boom"), noisy_norms(llama, 1e-1, seed=0):
        assert changed_since(llama, before)
        raise RuntimeError("boom")
    assert changed_since(llama, before) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_no_drift_after_1000_cycles(make_llama, snapshot_of, changed_since, dtype):
    model = make_llama(dtype=dtype)
    before = snapshot_of(model)
    generator = torch.Generator().manual_seed(0)
    for _ in range(1000):
        with noisy_norms(model, 1e-2, generator=generator):
            pass
    assert changed_since(model, before) == []


def test_nested_contexts_stack_and_unwind_to_clean(llama, snapshot_of, changed_since):
    before = snapshot_of(llama)
    weight = llama.model.layers[0].input_layernorm.weight
    with noisy_norms(llama, 1e-2, seed=0):
        outer = weight.detach().clone()
        with noisy_norms(llama, 1e-2, seed=1):
            assert not torch.equal(weight, outer)
        assert torch.equal(weight, outer)
    assert changed_since(llama, before) == []


def test_bf16_norms_round_small_sigmas_away(make_llama):
    """Documented limit: on bf16 norms of ~1, noise below ~2^-8 is lost to rounding."""
    model = make_llama(dtype=torch.bfloat16, random_norms=False)  # weights exactly 1.0
    for sigma, lo, hi in [(1e-4, 0.0, 0.0), (1e-2, 0.6, 0.8)]:
        with noisy_norms(model, sigma, seed=0):
            moved = torch.cat([(model.get_submodule(n).weight != 1).float() for n in DEFAULT_NORMS]).mean().item()
        assert lo <= moved <= hi, (sigma, moved)


def test_explicit_targets_reach_q_k_norm_and_the_final_norm(make_qwen3, snapshot_of, changed_since):
    model = make_qwen3()
    assert not any("q_norm" in n or "k_norm" in n for n in targeted_norms(model))
    names = list(targeted_norms(model, targets=("q_norm", "k_norm", "model.norm")))
    assert names == ["model.layers.0.self_attn.q_norm", "model.layers.0.self_attn.k_norm",
                     "model.layers.1.self_attn.q_norm", "model.layers.1.self_attn.k_norm", "model.norm"]
    before = snapshot_of(model)
    with noisy_norms(model, 1e-2, seed=0, targets="q_norm"):
        assert changed_since(model, before) == [f"param:model.layers.{i}.self_attn.q_norm.weight" for i in range(2)]
    assert changed_since(model, before) == []


def test_finds_norms_through_peft_and_modules_to_save(llama, tokens, snapshot_of, changed_since):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["post_attention_layernorm"])
    model = get_peft_model(llama, config)
    names = list(targeted_norms(model))
    assert names == [f"base_model.model.{n}" for n in DEFAULT_NORMS]
    before, clean = snapshot_of(model), logits(model, tokens)
    with noisy_norms(model, 1e-2, seed=0):
        moved = changed_since(model, before)
        noisy = logits(model, tokens)
    assert not torch.equal(noisy, clean)
    wrapped = [m for m in moved if "post_attention_layernorm" in m]
    assert len(wrapped) == 4 and any("modules_to_save.default" in m for m in wrapped)  # both copies, same Z
    assert changed_since(model, before) == []
    assert torch.equal(logits(model, tokens), clean)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"sigma": -1e-3}, "sigma=-0.001"),
        ({"sigma": float("inf")}, "sigma=inf"),
        ({"sigma": "big"}, "sigma='big'"),
        ({"sigma": 1e-2, "targets": ("input_layernorm", "pre_norm")}, "'pre_norm'"),
        ({"sigma": 0.0, "targets": ("q_norm",)}, "'q_norm'"),  # checked even when sigma is 0
        ({"sigma": 1e-2, "targets": ("q_proj",)}, "'q_proj'"),  # not a norm
        ({"sigma": 1e-2, "targets": ()}, "targets is empty"),
        ({"sigma": 1e-2, "seed": 1, "generator": torch.Generator()}, "seed or generator"),
    ],
)
def test_bad_input_names_the_value(llama, snapshot_of, changed_since, kwargs, named):
    before = snapshot_of(llama)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")), noisy_norms(llama, **kwargs):
        pass
    assert changed_since(llama, before) == []


def test_unknown_target_lists_the_norms_the_model_has(llama):
    with pytest.raises(ValueError, match="input_layernorm, norm, post_attention_layernorm"):
        targeted_norms(llama, ("pre_feedforward_layernorm",))


def test_a_non_module_is_a_type_error():
    with pytest.raises(TypeError, match="expected a torch.nn.Module, got dict"), noisy_norms({"w": 1}, 1e-2):
        pass
