"""Saved LoRA adapters for the eval tests: trained-looking (non-zero B) or untrained, on the tiny random Qwen2."""
from __future__ import annotations

import json
import os

import torch


def save_adapter(directory: str, loader=None, rank: int = 4, b_scale: float = 0.5, seed: int = 0) -> str:
    """A peft adapter for `loader` (default `RandomInit("tiny")`) whose B weights are ~N(0, b_scale^2); 0 = untrained."""
    from qerl.lora.apply import apply_lora
    from qerl.models import RandomInit

    model, _ = (loader or RandomInit("tiny")).load(dtype="float32")
    peft_model = apply_lora(model, rank=rank, alpha=2.0 * rank)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * b_scale)
    peft_model.save_pretrained(directory)
    return directory


def edit_config(directory: str, **changes) -> None:
    path = os.path.join(directory, "adapter_config.json")
    with open(path) as handle:
        config = json.load(handle)
    config.update(changes)
    with open(path, "w") as handle:
        json.dump(config, handle)
