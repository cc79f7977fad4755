"""Read a compressed-tensors `quantization_config` (config.json) into what qerl can load without re-quantizing.

Supported: weight-only FP4 schemes in the packed formats qerl stores bit for bit -
  `nvfp4-pack-quantized` (NVFP4A16: E2M1 codes, E4M3 scale per 16, FP32 global scale) -> qerl `nvfp4`
  `mxfp4-pack-quantized` (MXFP4A16: E2M1 codes, E8M0 scale per 32)                   -> qerl `mxfp4`
Anything else (activation quantization, int/fp8 formats, asymmetric, sparsity, transforms) is refused with one
line that says this. The checks read the JSON as compressed-tensors writes it (`QuantizationConfig.model_dump`);
target matching follows compressed-tensors' rules: an exact module name, `re:<regex>`, or a class name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

#: compressed-tensors format -> (qerl storage format, block size, scale strategy, per-layer tensor suffixes)
FORMATS = {
    "nvfp4-pack-quantized": ("nvfp4", 16, "tensor_group", ("weight_packed", "weight_scale", "weight_global_scale")),
    "mxfp4-pack-quantized": ("mxfp4", 32, "group", ("weight_packed", "weight_scale")),
}
SUPPORTED = ("compressed-tensors checkpoints with weight-only FP4: format nvfp4-pack-quantized (NVFP4A16) or "
             "mxfp4-pack-quantized (MXFP4A16), no activation quantization")


class SchemeError(ValueError):
    """A quantization_config qerl cannot load as stored; the message names the key and what is supported."""


@dataclass(frozen=True)
class CompressedScheme:
    """What a supported compressed-tensors checkpoint holds: one qerl format for every targeted Linear."""

    compressed_format: str  # "nvfp4-pack-quantized"
    format: str  # qerl storage format: "nvfp4" | "mxfp4"
    block_size: int
    targets: tuple[str, ...]
    ignore: tuple[str, ...]

    @property
    def suffixes(self) -> tuple[str, ...]:
        return FORMATS[self.compressed_format][3]

    def quantizes(self, name: str, module: nn.Module) -> bool:
        """Whether compressed-tensors would have quantized `module` (a Linear named `name`)."""
        return matches(name, module, self.targets) and not matches(name, module, self.ignore)


def matches(name: str, module: nn.Module, patterns: tuple[str, ...]) -> bool:
    """compressed-tensors' target rule: exact name, `re:` regex on the name, or a class name in the MRO."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], name):
                return True
        elif pattern == name or any(cls.__name__ == pattern for cls in type(module).__mro__):
            return True
    return False


def _fail(where: str, key: str, found, why: str) -> None:
    raise SchemeError(f"{where}: quantization_config.{key} is {found!r} ({why}); qerl loads {SUPPORTED}. "
                      "Quantize the bf16 model with `qerl quantize` or llm-compressor's NVFP4A16/MXFP4A16 scheme.")


def read_scheme(quantization_config: dict, where: str) -> CompressedScheme:
    """The scheme of a config.json `quantization_config`, or a SchemeError naming the first unsupported key."""
    qc = quantization_config
    if qc.get("quant_method") != "compressed-tensors":
        _fail(where, "quant_method", qc.get("quant_method"), "not compressed-tensors")
    if qc.get("quantization_status", "compressed") != "compressed":
        _fail(where, "quantization_status", qc.get("quantization_status"), "the weights are not stored compressed")
    for key in ("sparsity_config", "transform_config"):
        if qc.get(key):
            _fail(where, key, "set", "sparsity and transforms are not supported")
    if qc.get("kv_cache_scheme"):
        _fail(where, "kv_cache_scheme", "set", "KV-cache quantization is not supported")
    groups = qc.get("config_groups") or {}
    if not groups:
        _fail(where, "config_groups", groups, "no quantization group")
    formats, targets = set(), []
    for gname, group in groups.items():
        key = f"config_groups.{gname}"
        fmt = group.get("format") or qc.get("format")
        if fmt not in FORMATS:
            _fail(where, f"{key}.format", fmt, "not a packed FP4 format")
        for acts in ("input_activations", "output_activations"):
            if group.get(acts):
                _fail(where, f"{key}.{acts}", "set", "activation quantization (W4A4) is not supported; use the "
                      "weight-only A16 scheme")
        w = group.get("weights") or {}
        _, block, strategy, _ = FORMATS[fmt]
        want = {"num_bits": 4, "type": "float", "symmetric": True, "group_size": block, "strategy": strategy}
        for field, value in want.items():
            if w.get(field) != value:
                _fail(where, f"{key}.weights.{field}", w.get(field), f"{fmt} needs {value!r}")
        if w.get("actorder") or w.get("block_structure") or w.get("dynamic"):
            _fail(where, f"{key}.weights", "actorder/block_structure/dynamic set", "not a plain packed FP4 layer")
        formats.add(fmt)
        targets += list(group.get("targets") or [])
    if len(formats) > 1:
        _fail(where, "config_groups", sorted(formats), "one format per checkpoint (mixed precision is not supported)")
    fmt = formats.pop()
    return CompressedScheme(fmt, FORMATS[fmt][0], FORMATS[fmt][1], tuple(targets), tuple(qc.get("ignore") or ()))
