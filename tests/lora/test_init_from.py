"""`lora.init_from`: a saved adapter (with trained norms) continues training exactly; mismatches are one line."""
from __future__ import annotations

import pytest
import torch

from qerl.lora.adapter_folder import NORMS_FILE, AdapterFolderError, save_adapter
from qerl.lora.init_from import check_init_from, load_init_from
from qerl.models import RandomInit
from qerl.quantizers import NVFP4
from qerl.training.checks import RecipeError
from qerl.training.policy import build_policy
from qerl.training.settings import LoRASettings

TARGETS = ["q_proj", "v_proj"]


def _policy(lora: LoRASettings, hidden: int = 64):
    loader = RandomInit(overrides={"hidden_size": hidden}, seed=0, tokenizer="bytes")
    model, _ = build_policy(loader, NVFP4(), lora, "float32", "cpu", gradient_checkpointing=False)
    return model


def _trained(lora: LoRASettings):
    """A policy whose LoRA B and norms moved away from their initial values, as training would move them."""
    model = _policy(lora)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_continues_from_saved_adapter_with_norms(tmp_path):
    lora = LoRASettings(rank=4, alpha=8.0, targets=TARGETS, train_norms=True)
    trained = _trained(lora)
    folder = save_adapter(trained, str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / NORMS_FILE).is_file()

    fresh = _policy(lora)
    resumed = _policy(LoRASettings(rank=4, alpha=8.0, targets=TARGETS, train_norms=True, init_from=folder))
    ids = torch.tensor([[5, 17, 33, 90, 121, 7]])
    base = _logits(fresh, ids)
    want = _logits(trained, ids)
    got = _logits(resumed, ids)
    assert float((want - base).abs().max()) > 1e-2  # the adapter and norms matter
    assert torch.equal(got, want)  # and are carried over exactly
    trainable = {n for n, p in resumed.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in trained.named_parameters() if p.requires_grad}  # still trains the same


def test_recipe_settings_must_match_the_adapter(tmp_path):
    folder = save_adapter(_trained(LoRASettings(rank=4, alpha=8.0, targets=TARGETS)), str(tmp_path / "a"))
    check_init_from(folder, 4, 8.0, TARGETS)
    with pytest.raises(AdapterFolderError, match=r"adapter .*/a: the adapter has rank r=4 but lora.rank is 8"):
        check_init_from(folder, 8, 8.0, TARGETS)
    with pytest.raises(AdapterFolderError, match=r"lora_alpha=8 but lora.alpha is 16"):
        check_init_from(folder, 4, 16.0, TARGETS)
    with pytest.raises(AdapterFolderError, match=r"lora.targets has 'k_proj' but the adapter has no 'k_proj'"):
        check_init_from(folder, 4, 8.0, [*TARGETS, "k_proj"])
    with pytest.raises(AdapterFolderError, match=r"does not exist"):
        check_init_from(str(tmp_path / "missing"), 4, 8.0, TARGETS)


def test_adapter_of_another_model_names_the_module(tmp_path):
    folder = save_adapter(_trained(LoRASettings(rank=4, alpha=8.0, targets=TARGETS)), str(tmp_path / "a"))
    wider = _policy(LoRASettings(rank=4, alpha=8.0, targets=TARGETS), hidden=128)
    with pytest.raises(AdapterFolderError, match=r"module 'model.layers.0.self_attn.q_proj': the adapter's lora_A "
                                                 r"is \(4, 64\) but this model's is \(4, 128\)"):
        load_init_from(wider, folder)


def test_module_refuses_a_mismatched_adapter_before_loading_anything(tmp_path):
    from qerl.algorithms import GRPO
    from qerl.module import QeRLModule
    from qerl.rewards import GSM8KAccuracy

    folder = save_adapter(_trained(LoRASettings(rank=4, alpha=8.0, targets=TARGETS)), str(tmp_path / "a"))
    with pytest.raises(RecipeError, match=r"^`model.init_args.lora.init_from`: adapter .*rank r=4 but lora.rank is 32"):
        QeRLModule(RandomInit(), GRPO(), [GSM8KAccuracy()], lora=LoRASettings(init_from=folder, targets=TARGETS))
