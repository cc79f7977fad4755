"""Building the trained policy of a QeRLModule: loaded (quantized on load), LoRA added, the rest frozen."""
from __future__ import annotations

from typing import Any

from torch import nn

from qerl.lora.adapter_folder import AdapterFolderError
from qerl.lora.apply import LoraTargetError, apply_lora
from qerl.lora.init_from import load_init_from
from qerl.models.base import PolicyLoader
from qerl.models.logprobs import causal_lm
from qerl.noise.precision import keep_norms_float32
from qerl.parallel import world
from qerl.quantizers.base import Quantizer
from qerl.training.checks import _KEY, RecipeError
from qerl.training.settings import LoRASettings


def build_policy(policy: PolicyLoader, quantizer: Quantizer | None, lora: LoRASettings | None, dtype: str, device,
                 gradient_checkpointing: bool, noise: bool = False) -> tuple[nn.Module, Any]:
    """Load the policy (quantized on load), add LoRA, freeze the rest; return (model, tokenizer).

    With `noise` (AQN on), the targeted norm weights are kept in float32 so noise down to 1e-4 survives
    (`qerl.noise.precision`)."""
    model, tokenizer = policy.load(quantizer=quantizer, dtype=dtype, device=device)
    if policy.last_report is not None and world()[1] == 0:
        print(f"qerl: {policy.last_report.one_line()}")
    if lora is not None:
        try:
            model = apply_lora(model, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                               targets=tuple(lora.targets), train_norms=lora.train_norms)
        except LoraTargetError as exc:
            raise RecipeError(f"`{_KEY}.lora.targets`: {exc}") from None
    else:
        for param in model.parameters():
            param.requires_grad_(param.is_floating_point())
    if noise:
        try:
            keep_norms_float32(model)
        except ValueError as exc:
            raise RecipeError(f"`{_KEY}.noise` is set but the policy cannot carry AQN noise: {exc}") from None
    if lora is not None and lora.init_from:  # after the float32 norms, so trained float32 norms load exactly
        try:
            load_init_from(model, lora.init_from)
        except AdapterFolderError as exc:
            raise RecipeError(f"`{_KEY}.lora.init_from`: {exc}") from None
    if gradient_checkpointing:
        causal_lm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not any(p.requires_grad for p in model.parameters()):
        raise RecipeError(f"Nothing to train: no parameter of the policy requires a gradient (check `{_KEY}.lora`).")
    return model, tokenizer
