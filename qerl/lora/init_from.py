"""`lora.init_from`: start training from a saved adapter instead of a fresh one (B = 0).

Checked twice: when the recipe is built (the folder, its rank, alpha and target modules against the recipe's
`lora` settings, no model needed) and after the policy is wrapped (every adapter tensor must land on a LoRA module
of the same shape, and every LoRA module of the model must get one). Each mismatch is one line naming the folder
and the module.
"""
from __future__ import annotations

import torch
from torch import nn

from qerl.lora.adapter_folder import PEFT_PREFIX, AdapterFolderError, module_of, read_adapter_folder, read_config


def _where(folder: str) -> str:
    return f"adapter {folder}"


def check_init_from(folder: str, rank: int, alpha: float, targets: list[str] | tuple[str, ...]) -> None:
    """The adapter's rank, alpha and target modules are the recipe's (`lora.rank`, `lora.alpha`, `lora.targets`)."""
    config = read_config(folder)
    have_rank, have_alpha = int(config.get("r", 0)), float(config.get("lora_alpha", 0))
    if have_rank != int(rank):
        raise AdapterFolderError(f"{_where(folder)}: the adapter has rank r={have_rank} but lora.rank is {rank}; "
                                 f"set lora.rank: {have_rank}.")
    if have_alpha != float(alpha):
        raise AdapterFolderError(f"{_where(folder)}: the adapter has lora_alpha={have_alpha:g} but lora.alpha is "
                                 f"{float(alpha):g}; set lora.alpha: {have_alpha:g} (it scales the adapter's update).")
    stored = config.get("target_modules") or []
    stored = {stored} if isinstance(stored, str) else set(stored)
    wanted = set(targets)
    for module in sorted(wanted - stored):
        raise AdapterFolderError(f"{_where(folder)}: lora.targets has {module!r} but the adapter has no {module!r} "
                                 f"(its target_modules: {', '.join(sorted(stored))}); make lora.targets match.")
    for module in sorted(stored - wanted):
        raise AdapterFolderError(f"{_where(folder)}: the adapter trains {module!r} but lora.targets does not name it "
                                 f"(its target_modules: {', '.join(sorted(stored))}); make lora.targets match.")


def _param_name(key: str) -> str:
    """peft file key -> parameter name in the live model (`lora_A.weight` -> `lora_A.default.weight`)."""
    return key.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")


def load_init_from(model: nn.Module, folder: str) -> dict[str, int]:
    """Copy the adapter of `folder` (and its trained norms) into the peft-wrapped `model`; returns counts.

    Raises AdapterFolderError naming the folder and the first module that does not fit.
    """
    _, tensors, norms = read_adapter_folder(folder)
    params = dict(model.named_parameters())
    lora_params = {n for n in params if ".lora_A." in n or ".lora_B." in n}
    filled: set[str] = set()
    with torch.no_grad():
        for key, tensor in sorted(tensors.items()):
            name = _param_name(key)
            module = module_of(key)
            if name not in params:
                raise AdapterFolderError(f"{_where(folder)}: module {module!r} has a LoRA weight in the adapter "
                                         f"({key}) but no LoRA in this model; the adapter was trained on another model "
                                         "or other lora.targets.")
            param = params[name]
            if tuple(param.shape) != tuple(tensor.shape):
                raise AdapterFolderError(f"{_where(folder)}: module {module!r}: the adapter's {key.rsplit('.', 2)[-2]} "
                                         f"is {tuple(tensor.shape)} but this model's is {tuple(param.shape)}; the "
                                         "adapter was trained on another model (or another rank).")
            param.copy_(tensor.to(param.dtype))
            filled.add(name)
        for name in sorted(lora_params - filled):
            raise AdapterFolderError(f"{_where(folder)}: module {module_of(name.replace('.default', ''))!r} gets a LoRA "
                                     "in this model but the adapter has none for it; the adapter was trained on "
                                     "another model or other lora.targets.")
        for name, tensor in sorted(norms.items()):
            param = params.get(PEFT_PREFIX + name)
            if param is None or tuple(param.shape) != tuple(tensor.shape):
                found = "no such weight" if param is None else f"shape {tuple(param.shape)}"
                raise AdapterFolderError(f"{_where(folder)}: trained norm {name!r} {tuple(tensor.shape)} does not fit "
                                         f"this model ({found}).")
            param.copy_(tensor.to(param.dtype))
    return {"lora": len(filled), "norms": len(norms)}
