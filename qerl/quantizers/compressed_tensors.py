"""Export an NVFP4- or MXFP4-quantized model in the compressed-tensors layout that vLLM loads.

NVFP4 (`nvfp4-pack-quantized`; MXFP4 below):

Per quantized Linear `name`:
  `name.weight_packed`        uint8 (out, in/2): our `codes` unchanged (even column in the low nibble)
  `name.weight_scale`         float8_e4m3fn (out, in/16): our `scales` unchanged
  `name.weight_global_scale`  float32 (1,): compressed-tensors stores the DIVISOR 448*6/amax, so we write
                              1 / global_scale; it dequantizes as e2m1 * weight_scale / weight_global_scale.
Because 1 / (1 / g) is not always g in float32, the safetensors header also records each layer's exact g
(`qerl_nvfp4_global_scales`: JSON name -> float.hex), which qerl's loader uses while it still agrees with the
stored divisor; other readers (vLLM, compressed-tensors) ignore header metadata.
Everything else (embeddings, norms, lm_head, skipped Linears) is written as it is, and config.json gets a
`quantization_config` (quant_method compressed-tensors, W4A16: no activation quantization) whose `ignore`
lists the Linear layers kept in bf16.
MXFP4 (`mxfp4-pack-quantized`, group 32, vLLM's `CompressedTensorsW4A4Mxfp4`, Marlin W4A16 on Hopper):
  `name.weight_packed`        uint8 (out, in/2): our `codes` unchanged
  `name.weight_scale`         uint8 (out, in/32): our biased E8M0 exponents unchanged (no global scale)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from qerl.quantizers.layers import QuantLinear

COMPRESSED_FORMAT = "nvfp4-pack-quantized"
#: qerl format -> (compressed-tensors format, weight args that differ between the two)
COMPRESSED_FORMATS = {"nvfp4": (COMPRESSED_FORMAT, {"group_size": 16, "strategy": "tensor_group"}),
                      "mxfp4": ("mxfp4-pack-quantized", {"group_size": 32, "strategy": "group"})}
WEIGHTS_FILE = "model.safetensors"
GLOBAL_SCALES_METADATA = "qerl_nvfp4_global_scales"


class ExportError(ValueError):
    """The model cannot be written in the requested external layout."""


def nvfp4_quantization_config(ignore: list[str], fmt: str = "nvfp4") -> dict:
    """The `quantization_config` block of config.json for NVFP4 (or MXFP4) weights with bf16 activations."""
    name, args = COMPRESSED_FORMATS[fmt]
    weights = {"num_bits": 4, "type": "float", "symmetric": True, **args,
               "dynamic": False, "actorder": None, "block_structure": None, "observer": "minmax",
               "observer_kwargs": {}}
    return {"quant_method": "compressed-tensors", "format": name, "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                          "output_activations": None, "format": name}},
            "ignore": ignore, "kv_cache_scheme": None, "global_compression_ratio": None}


def compressed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Tensors of `model` named as compressed-tensors names them (tied duplicates written once)."""
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not quantized:
        raise ExportError(f"{type(model).__name__} has no QuantLinear layer; quantize it with NVFP4 first.")
    fmt = next(iter(quantized.values())).format
    others = [n for n, m in quantized.items() if m.format != fmt or m.format not in COMPRESSED_FORMATS]
    if others:
        raise ExportError(f"compressed-tensors export writes one of {sorted(COMPRESSED_FORMATS)} for all layers; "
                          f"layers {others[:3]} are {quantized[others[0]].format}. Quantize with NVFP4 (or MXFP4) "
                          "for a vLLM checkpoint.")
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for key, tensor in model.state_dict().items():
        if key.rpartition(".")[0] in quantized:
            continue
        storage = (tensor.data_ptr(), tuple(tensor.shape))
        if tensor.numel() and storage in seen:  # tied lm_head / embeddings: keep the first name
            continue
        seen.add(storage)
        out[key] = tensor.detach().contiguous()
    for name, layer in quantized.items():
        out[f"{name}.weight_packed"] = layer.codes.contiguous()
        out[f"{name}.weight_scale"] = layer.scales.contiguous()
        if fmt == "nvfp4":
            out[f"{name}.weight_global_scale"] = torch.reciprocal(layer.global_scale.float()).reshape(1)
        if layer.bias is not None:
            out[f"{name}.bias"] = layer.bias.contiguous()
    return out


def global_scales_metadata(model: nn.Module) -> dict[str, str]:
    """The safetensors header entry recording each NVFP4 layer's exact float32 global scale (hex)."""
    exact = {name: float(m.global_scale.float()).hex() for name, m in model.named_modules()
             if isinstance(m, QuantLinear) and m.format == "nvfp4"}
    return {GLOBAL_SCALES_METADATA: json.dumps(exact, separators=(",", ":"))}


def export_compressed_tensors(model: nn.Module, directory: str | Path) -> Path:
    """Write `model` (NVFP4 QuantLinear layers) as a compressed-tensors checkpoint vLLM can serve."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.cpu() for k, v in compressed_state_dict(model).items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt", **global_scales_metadata(model)})
    ignore = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, QuantLinear))
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        data = config.to_dict()
    else:
        data = {}
    fmt = next(m.format for m in model.modules() if isinstance(m, QuantLinear))
    data["quantization_config"] = nvfp4_quantization_config(ignore, fmt)
    (directory / "config.json").write_text(json.dumps(data, indent=2, default=str))
    return directory
