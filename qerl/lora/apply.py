"""LoRA on a quantized base through peft: `apply_lora(model, ...) -> PeftModel`.

peft 0.21 wraps only the layer types it knows; a `QuantLinear` is handed to peft through its custom-module
mapping (`LoraConfig._register_custom_module({QuantLinear: QuantLoraLinear})`). `QuantLoraLinear` is peft's
own `lora.Linear` (same `lora_A`/`lora_B` parameters, same state-dict keys), so `save_pretrained` writes a
standard adapter that loads onto the bf16 base with `PeftModel.from_pretrained`.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from qerl.quantizers.layers import QuantLinear

if TYPE_CHECKING:
    from peft import PeftModel

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraTargetError(ValueError):
    """A LoRA target names no module of the model."""


@functools.cache
def _lora_linear_class() -> type:
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    class QuantLoraLinear(PeftLoraLinear):
        """peft's LoRA Linear over a frozen QuantLinear: y = base(x) + B(A(dropout(x))) * scaling."""

        def _get_base_layer_device_and_dtype(self, base_layer):
            # The base stores uint8 codes: take its device, and leave the adapter dtype as created (fp32 or the
            # dtype the caller casts the model to); never dequantize the base just to read a dtype.
            return base_layer.codes.device, None

        def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
            raise NotImplementedError(
                "Merging a LoRA adapter into a 4-bit QuantLinear is not supported (the sum is not 4-bit). "
                "Merge into the dequantized base instead: `qerl export --merge` (qerl.lora.merge.merge_to_dense).")

        def unmerge(self) -> None:  # nothing is ever merged
            return None

    QuantLoraLinear.__qualname__ = QuantLoraLinear.__name__ = "QuantLoraLinear"
    return QuantLoraLinear


def _check_targets(model: nn.Module, targets: Sequence[str]) -> None:
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    names = [name for name, _ in model.named_modules() if name]
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                              if isinstance(m, (nn.Linear, QuantLinear))})
            raise LoraTargetError(
                f"LoRA target {target!r} matches no module of {type(model).__name__}. "
                f"Its linear layers are named: {', '.join(linears) or '(none)'}. "
                f"Fix `targets` (known module names include {len(leaf_names)} leaf names).")


def _is_norm(module: nn.Module) -> bool:
    kind = type(module).__name__.lower()
    return "rmsnorm" in kind or "layernorm" in kind


def apply_lora(model: nn.Module, rank: int = 32, alpha: float = 64.0, dropout: float = 0.0,
               targets: Sequence[str] = DEFAULT_TARGETS, train_norms: bool = False) -> PeftModel:
    """Wrap `model` (quantized or bf16) with peft LoRA adapters on `targets`; only LoRA (and norms) train.

    Args:
        rank, alpha, dropout: LoRA r, lora_alpha and lora_dropout.
        targets: module-name suffixes (q_proj ... down_proj); each must match at least one module.
        train_norms: also give the RMSNorm/LayerNorm weights gradients (they are not part of the peft adapter
            file; save them yourself if you train them).
    """
    from peft import LoraConfig, get_peft_model

    targets = tuple(targets)
    if not targets:
        raise LoraTargetError("apply_lora needs at least one target module name (e.g. 'q_proj').")
    _check_targets(model, targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                        bias="none", task_type="CAUSAL_LM")
    config._register_custom_module({QuantLinear: _lora_linear_class()})
    with warnings.catch_warnings():  # peft warns about any layer type it does not know; QuantLinear is handled
        warnings.filterwarnings("ignore", message="Unsupported layer type", category=UserWarning)
        peft_model = get_peft_model(model, config)
    if train_norms:
        for module in peft_model.modules():
            if _is_norm(module):
                for param in module.parameters(recurse=False):
                    param.requires_grad_(True)
    return peft_model


def base_weight_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters that are not LoRA (the norms under `train_norms`; usually none).

    Disabling the adapters does not undo training on those, so the KL reference needs their loaded values back.
    """
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}


@contextlib.contextmanager
def reference_policy(model: nn.Module, base_weights: dict[str, torch.Tensor] | None = None):
    """The base policy: LoRA adapters disabled and `base_weights` swapped in (the trained ones are put back after)."""
    params = dict(model.named_parameters()) if base_weights else {}
    trained = {}
    with model.disable_adapter():
        try:
            for name, weight in (base_weights or {}).items():
                param = params[name]
                trained[name] = param.data
                param.data = weight.to(device=param.device, dtype=param.dtype)
            yield model
        finally:
            for name, weight in trained.items():
                params[name].data = weight


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that will receive gradients."""
    return [n for n, p in model.named_parameters() if p.requires_grad]
