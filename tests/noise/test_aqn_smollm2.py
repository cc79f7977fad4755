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
