"""A checksum of a model's stored base tensors, to tell whether anything changed since it was loaded.

Computed on the tensors' own device from their raw bytes (packed codes, scales, dense weights alike), ~1 MiB at
a time (~8 MiB of temporaries), so it never makes a dense or float copy of a layer. LoRA tensors are left out;
names are normalised the way the vLLM export names them (no peft prefix, no `.base_layer`), so a policy with
adapters injected has the fingerprint it had before.
"""
from __future__ import annotations

import re

import torch
from torch import nn

_MODULUS = 65521  # position weights cycle through 1.._MODULUS (a Fletcher-style second sum)
_CHUNK = _MODULUS * 16  # bytes summed at once (~1 MiB): a multiple of the modulus, so every chunk has the same weights
_weights: dict[torch.device, torch.Tensor] = {}
_PEFT_SEGMENT = re.compile(r"\.base_layer(?=\.|$)")


def base_name(name: str) -> str:
    """A tensor name without peft's `base_model.model.` prefix and `.base_layer` segments."""
    return _PEFT_SEGMENT.sub("", name.removeprefix("base_model.model."))


def _position_weights(device: torch.device) -> torch.Tensor:
    """`p % _MODULUS + 1` for the positions p of one chunk (int32, 4 MiB), made once per device."""
    if device not in _weights:
        _weights[device] = torch.arange(_CHUNK, dtype=torch.int32, device=device) % _MODULUS + 1
    return _weights[device]


def tensor_checksum(tensor: torch.Tensor) -> tuple[int, int, str, tuple[int, ...]]:
    """(byte sum, position-weighted byte sum, dtype, shape) of a tensor's raw bytes.

    Streamed a chunk at a time: besides the cached weights, ~8 MiB of temporaries whatever the tensor's size.
    """
    flat = tensor.detach().contiguous().reshape(-1)
    data = flat.view(torch.uint8) if flat.numel() else flat.to(torch.uint8)
    weights = _position_weights(data.device)
    plain = weighted = 0
    for start in range(0, data.numel(), _CHUNK):
        chunk = data[start:start + _CHUNK]
        plain += int(chunk.sum(dtype=torch.int64))
        weighted += int((chunk.to(torch.int32) * weights[:chunk.numel()]).sum(dtype=torch.int64))
    return plain, weighted, str(tensor.dtype), tuple(tensor.shape)


def stored_fingerprint(model: nn.Module) -> dict[str, tuple]:
    """Checksum of every non-LoRA parameter and persistent buffer of `model`, by normalised name."""
    out: dict[str, tuple] = {}
    for module_name, module in model.named_modules():
        if "lora_" in module_name:
            continue
        own = [(k, v) for k, v in module._parameters.items() if v is not None]
        own += [(k, v) for k, v in module._buffers.items()
                if v is not None and k not in module._non_persistent_buffers_set]
        for key, tensor in own:
            name = base_name(f"{module_name}.{key}" if module_name else key)
            if name not in out:
                out[name] = tensor_checksum(tensor)
    return out
