"""Which RMSNorm weights AQN perturbs: the targeted norms of a model, found by name."""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

DEFAULT_TARGETS: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")

# peft wraps a module it trains or adapts; the weight the model runs lives below the wrapper.
_WRAPPER_SUFFIX = re.compile(r"(\.original_module|\.modules_to_save\.[^.]+|\.base_layer)+$")


def _logical_name(module_name: str) -> str:
    """The module's name without peft wrapper segments ('...input_layernorm.modules_to_save.default')."""
    return _WRAPPER_SUFFIX.sub("", module_name)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _norm_like_suffixes(model: nn.Module) -> list[str]:
    found = {
        _logical_name(name).rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if "norm" in type(module).__name__.lower() and isinstance(module._parameters.get("weight"), torch.Tensor)
    }
    return sorted(found)


def _check_targets(targets: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    if not targets:
        raise ValueError("noisy_norms: targets is empty; name at least one norm (to switch AQN off, use sigma=0).")
    for target in targets:
        if not isinstance(target, str) or not target.strip(".").strip():
            raise ValueError(f"noisy_norms: target {target!r} is not a module name suffix like 'input_layernorm'.")
    return targets


def targeted_norms(
    model: nn.Module, targets: Sequence[str] | str = DEFAULT_TARGETS
) -> dict[str, list[nn.Parameter]]:
    """Norm weights that AQN would perturb, keyed by the norm's name without peft wrapper segments.

    A module is targeted when its name ends with `.<target>` (or equals it) for one of
    `targets` - so `layers.0.input_layernorm` is found inside
    `base_model.model.model.layers.0.input_layernorm` - and it owns a 1-D `weight`.
    The names `q_norm`, `k_norm` and the final `norm` are never matched by the defaults.
    One key can hold several tensors (a peft `modules_to_save` copy next to the original);
    they receive the same noise.

    Raises:
        ValueError: a target matches no module (the message lists the norm names the model has),
            or matches a module whose weight is not a per-channel (1-D) scale.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"noisy_norms: expected a torch.nn.Module, got {type(model).__name__}.")
    targets = _check_targets(targets)
    groups: dict[str, list[nn.Parameter]] = {}
    hits = dict.fromkeys(targets, 0)
    seen: set[int] = set()
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if not isinstance(weight, torch.Tensor):
            continue
        logical = _logical_name(name)
        for target in targets:
            if not _matches(logical, target):
                continue
            if weight.dim() != 1:
                raise ValueError(
                    f"noisy_norms: target {target!r} matches {name!r} ({type(module).__name__}, weight shape "
                    f"{tuple(weight.shape)}), which is not a norm with a per-channel scale. "
                    f"Target norm layers, e.g. {', '.join(DEFAULT_TARGETS)}."
                )
            hits[target] += 1
            if id(weight) not in seen:
                seen.add(id(weight))
                groups.setdefault(logical, []).append(weight)
            break
    missing = [t for t, n in hits.items() if n == 0]
    if missing:
        have = _norm_like_suffixes(model)
        raise ValueError(
            f"noisy_norms: unknown norm name(s) {', '.join(repr(t) for t in missing)} in targets: no module of "
            f"{type(model).__name__} ends with that name. Norm layers this model has: {', '.join(have) or '(none)'}."
        )
    return groups
