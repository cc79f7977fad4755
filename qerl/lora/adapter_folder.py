"""A saved LoRA adapter folder: peft's two files plus the trained norm weights qerl adds next to them.

    <folder>/adapter_config.json          peft's LoRA config (r, lora_alpha, target_modules, ...)
    <folder>/adapter_model.safetensors    lora_A / lora_B weights, peft's key names
    <folder>/qerl_norms.safetensors       only when norms were trained (`lora.train_norms`): their weights by
                                          Hugging Face name (`model.layers.0.input_layernorm.weight`)

peft and vLLM read the first two and ignore the third; `qerl export` folds the norms into the exported base, and
`lora.init_from` loads all three to continue training.
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
NORMS_FILE = "qerl_norms.safetensors"
PEFT_PREFIX = "base_model.model."


class AdapterFolderError(ValueError):
    """An adapter folder that is missing, damaged, or does not fit the model; the message names folder and module."""


def hf_name(peft_name: str) -> str:
    """`base_model.model.model.norm.weight` -> `model.norm.weight` (the name in the un-wrapped model)."""
    return peft_name.removeprefix(PEFT_PREFIX)


def trained_base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters that are not LoRA (the norms under `train_norms`), by Hugging Face name, on the CPU."""
    return {hf_name(n): p.detach().cpu().contiguous() for n, p in model.named_parameters()
            if p.requires_grad and "lora_" not in n}


def save_adapter(model: nn.Module, folder: str) -> str:
    """peft's `save_pretrained` of `model` into `folder`, plus `qerl_norms.safetensors` when norms are trained."""
    from safetensors.torch import save_file

    model.save_pretrained(folder)
    norms = trained_base_weights(model) if hasattr(model, "peft_config") else {}  # a full model saved itself whole
    if norms:
        save_file(norms, os.path.join(folder, NORMS_FILE), metadata={"format": "pt"})
    return folder


def _load_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as exc:  # noqa: BLE001 - a damaged header means one thing to a user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise AdapterFolderError(f"{path} is damaged ({os.path.getsize(path):,} bytes; {first}); save the adapter "
                                 "again or use another step's folder.") from None


def read_config(folder: str) -> dict:
    """adapter_config.json of `folder` (a LoRA config), or one line naming what is missing."""
    if not os.path.isdir(folder):
        raise AdapterFolderError(f"adapter folder {folder!r} does not exist (a peft adapter folder with {CONFIG_FILE} "
                                 f"and {WEIGHTS_FILE}, e.g. runs/<recipe>/version_0/adapter/final).")
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise AdapterFolderError(f"{path} is missing: {folder!r} is not a peft adapter folder.")
    try:
        with open(path) as handle:
            config = json.load(handle)
    except json.JSONDecodeError as exc:
        raise AdapterFolderError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg}).") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterFolderError(f"{path}: peft_type is {config.get('peft_type')!r}; only LoRA adapters are supported.")
    return config


def read_adapter_folder(folder: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(adapter config, LoRA tensors by peft key, trained norms by HF name - empty when none were saved)."""
    config = read_config(folder)
    weights = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise AdapterFolderError(f"{folder!r} has {CONFIG_FILE} but no {WEIGHTS_FILE}.")
    tensors = _load_safetensors(weights)
    if not any(".lora_A." in k for k in tensors):
        raise AdapterFolderError(f"{weights} holds no lora_A tensor; it is not a LoRA adapter.")
    norms_path = os.path.join(folder, NORMS_FILE)
    norms = _load_safetensors(norms_path) if os.path.isfile(norms_path) else {}
    return config, tensors, norms


def module_of(key: str) -> str:
    """`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` -> `model.layers.0.self_attn.q_proj`."""
    name = hf_name(key)
    for marker in (".lora_A.", ".lora_B."):
        if marker in name:
            return name.split(marker)[0]
    return name
