"""Loading a saved peft LoRA adapter for evaluation, and proving it is applied (not silently the base model).

The reference QeRL eval scored the base model because the adapter was never applied. Here an adapter is
checked against the model before loading (layer names, shapes, rank), loaded with peft onto the (quantized)
base, and then verified: every tensor of the file must sit in the model, at least one LoRA module must be
active with a non-zero B, and the adapter must change the model's logits. Anything else is refused.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from qerl.lora.adapter_folder import CONFIG_FILE, AdapterFolderError, read_config
from qerl.lora.apply import _lora_linear_class
from qerl.quantizers.layers import QuantLinear

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class AdapterError(ValueError):
    """An adapter that cannot be used with this model; the message names the adapter, the model and the layer."""


@dataclass
class AdapterInfo:
    """What was applied: folder, weights file and its sha256, rank, alpha, LoRA modules found, adapter's base name."""

    path: str
    weights_file: str
    sha256: str
    rank: int
    alpha: float
    num_lora_modules: int
    base_model: str | None
    logit_change: float

    def describe(self) -> str:
        return (f"{self.path} (sha256 {self.sha256[:16]}, rank {self.rank}, {self.num_lora_modules} LoRA modules, "
                f"max |logit change| {self.logit_change:.3g})")


def adapter_files(path: str) -> tuple[dict, str]:
    """(adapter config, weights file) of an adapter folder; errors name the missing path or the bad key."""
    try:
        config = read_config(path)  # the folder, adapter_config.json, valid JSON, a LoRA config
    except AdapterFolderError as exc:
        raise AdapterError(str(exc)) from None
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return config, os.path.join(path, name)
    raise AdapterError(f"{path!r} has {CONFIG_FILE} but no weights ({' or '.join(WEIGHT_FILES)}).")


def sha256_of(file: str) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_adapter(path: str) -> tuple[dict, dict[str, torch.Tensor], str]:
    """(config dict, tensors, weights file) of an adapter folder."""
    config, weights = adapter_files(path)
    size = os.path.getsize(weights)
    try:
        if weights.endswith(".safetensors"):
            from safetensors.torch import load_file

            tensors = load_file(weights)
        else:
            tensors = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a header/zip/pickle error of a damaged file means one thing to a user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise AdapterError(f"adapter weights {weights} are damaged ({size:,} bytes; {first}): export the adapter "
                           "again or use another step's folder.") from None
    if not tensors:
        raise AdapterError(f"adapter weights {weights} hold no tensors ({size:,} bytes).")
    return config, tensors, weights


def _module_path(key: str) -> str:
    """`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` -> `model.layers.0.self_attn.q_proj`."""
    name = key.removeprefix("base_model.model.")
    for marker in (".lora_A.", ".lora_B."):
        if marker in name:
            return name.split(marker)[0]
    return name


def check_adapter_fits(model: nn.Module, config: dict, tensors: dict[str, torch.Tensor], model_name: str,
                       path: str) -> None:
    """Refuse an adapter made for another base model or rank, naming both sides and the first layer that differs."""
    made_for = config.get("base_model_name_or_path") or "(not recorded in adapter_config.json)"
    both = f"adapter {path!r} was made for base {made_for}; the model is {model_name}"
    rank = int(config.get("r", 0))
    patterns = config.get("rank_pattern") or {}
    modules = dict(model.named_modules())
    lora_a = {k: v for k, v in tensors.items() if ".lora_A." in k}
    if not lora_a:
        raise AdapterError(f"{path}: the weights hold no lora_A tensors; this is not a LoRA adapter for {model_name}.")
    for key, a in sorted(lora_a.items()):
        name = _module_path(key)
        expected = next((int(r) for p, r in patterns.items() if name.endswith(p)), rank)
        if a.shape[0] != expected:
            raise AdapterError(f"{path}: adapter_config.json says rank r={expected} but {key} has rank {a.shape[0]}; "
                               "the config and weights come from different adapters.")
        module = modules.get(name)
        if module is None:
            raise AdapterError(f"{both}: layer {name!r} of the adapter does not exist in the model. "
                               "Evaluate with the base model the adapter was trained on (--model).")
        b = tensors.get(key.replace(".lora_A.", ".lora_B."))
        want = (getattr(module, "in_features", None), getattr(module, "out_features", None))
        have = (int(a.shape[1]), int(b.shape[0]) if b is not None else None)
        if want != have:
            raise AdapterError(f"{both}: layer {name!r} is {want[0]} -> {want[1]} in the model but the adapter's "
                               f"lora_A/lora_B are {have[0]} -> {have[1]} (rank {a.shape[0]}). "
                               "Evaluate with the base model the adapter was trained on (--model).")


def _lora_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})]


def _probe_logits(model: nn.Module, vocab: int) -> torch.Tensor:
    device = next(model.parameters()).device
    ids = (torch.arange(1, 9, device=device) * 7919 % max(2, vocab - 1)).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def apply_adapter(model: nn.Module, path: str, model_name: str):
    """(PeftModel, AdapterInfo): `path` loaded onto `model` (quantized or dense) and verified to be active."""
    from peft import LoraConfig, PeftModel

    config, tensors, weights = read_adapter(path)
    check_adapter_fits(model, config, tensors, model_name, path)
    lora_config = LoraConfig.from_pretrained(path)
    lora_config._register_custom_module({QuantLinear: _lora_linear_class()})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unsupported layer type", category=UserWarning)
        peft_model = PeftModel.from_pretrained(model, path, config=lora_config, is_trainable=False)
    peft_model.eval()
    info = verify_adapter(peft_model, config, tensors, path, weights, model_name)
    return peft_model, info


def verify_adapter(peft_model, config: dict, tensors: dict[str, torch.Tensor], path: str, weights: str,
                   model_name: str) -> AdapterInfo:
    """Every file tensor loaded, LoRA modules present and non-zero, logits changed; AdapterError otherwise."""
    from peft import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(peft_model)
    missing = [k for k in tensors if k not in loaded]
    if missing:
        raise AdapterError(f"{path}: {len(missing)} adapter tensors were not loaded into {model_name} (first: "
                           f"{missing[0]}); the adapter does not match this model's layer names.")
    for key, value in tensors.items():
        if not torch.equal(loaded[key].float().cpu(), value.float()):
            raise AdapterError(f"{path}: tensor {key} differs after loading into {model_name}; refusing to evaluate.")
    modules = _lora_modules(peft_model)
    if not modules:
        raise AdapterError(f"{path}: no LoRA module is active in {model_name} after loading; refusing to score the base.")
    if not any(bool(m.lora_B["default"].weight.detach().ne(0).any()) for _, m in modules):
        raise AdapterError(f"{path}: every LoRA B weight is zero, so the adapter is the base model (an untrained "
                           "adapter, e.g. saved before the first optimizer step). Evaluate the base without --adapter.")
    vocab = int(getattr(peft_model.get_base_model().config, "vocab_size", 2))
    with_adapter = _probe_logits(peft_model, vocab)
    with peft_model.disable_adapter():
        without = _probe_logits(peft_model, vocab)
    change = float((with_adapter - without).abs().max())
    if not change > 0:
        raise AdapterError(f"{path}: the adapter does not change {model_name}'s logits; refusing to evaluate it.")
    return AdapterInfo(path=os.path.abspath(path), weights_file=os.path.basename(weights), sha256=sha256_of(weights),
                       rank=int(config.get("r", 0)), alpha=float(config.get("lora_alpha", 0)),
                       num_lora_modules=len(modules), base_model=config.get("base_model_name_or_path"),
                       logit_change=change)
