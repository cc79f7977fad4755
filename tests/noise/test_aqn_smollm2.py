"""AQN on the real SmolLM2-135M-Instruct (30 layers): it reaches every decoder norm and comes back bit-exactly."""
from __future__ import annotations

import pytest
import torch

from qerl.noise import noisy_norms, targeted_norms


@pytest.mark.slow
def test_noise_on_real_smollm2(smollm2, snapshot_of, changed_since):
    model, tokenizer = smollm2  # shared: restoring bit-exactly is exactly what this test proves
    names = list(targeted_norms(model))
    assert len(names) == 60 and names[0] == "model.layers.0.input_layernorm" and "model.norm" not in names
    ids = tokenizer("What is 12 + 35? Answer:", return_tensors="pt").input_ids
    before = snapshot_of(model)
    versions = [p._version for p in model.parameters()]
    with noisy_norms(model, 0.0, seed=0):
        assert [p._version for p in model.parameters()] == versions  # sigma 0: nothing written at all
    with torch.no_grad():
        clean = model(ids).logits[0, -1]
        with noisy_norms(model, 1e-2, seed=0):
            noisy = model(ids).logits[0, -1]
            moved = changed_since(model, before)
        after = model(ids).logits[0, -1]
    assert torch.equal(after, clean)
    assert len(moved) == 60 and all(m.endswith("layernorm.weight") for m in moved)
    assert changed_since(model, before) == []
    shift = (torch.softmax(noisy, -1) - torch.softmax(clean, -1)).abs().sum().item()  # total variation x 2
    assert shift > 1e-3, shift


@pytest.mark.slow
def test_bf16_smollm2_with_float32_norms_carries_sigma_5e_4_into_its_next_token_distribution(smollm2):
    """Issue #20 on the real model: bf16 norms (SmolLM2's are mostly well below 1) keep 5e-4 noise on only ~20% of
    the channels, rounded to bf16 steps; float32 norms hold it exactly and the bf16 forward passes it on."""
    import copy

    from qerl.noise.precision import keep_norms_float32

    model, tokenizer = smollm2
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    wide = copy.deepcopy(bf16)
    assert keep_norms_float32(wide) == 60
    ids = tokenizer("What is 12 + 35? Answer:", return_tensors="pt").input_ids
    with torch.no_grad():
        clean = torch.softmax(wide(ids).logits[0, -1].float(), -1)
        with pytest.warns(RuntimeWarning, match="bfloat16, which cannot hold noise"), noisy_norms(bf16, 5e-4, seed=0) as lost:
            pass
        with noisy_norms(wide, 5e-4, seed=0) as held:
            noisy = torch.softmax(wide(ids).logits[0, -1].float(), -1)
    assert lost.realized.moved < 0.5 and lost.realized.rounding > 0.1 * 5e-4
    assert abs(held.realized.sigma / 5e-4 - 1) < 0.1 and held.realized.moved > 0.99
    assert (noisy - clean).abs().sum().item() > 1e-4  # the noise reaches the next-token distribution
