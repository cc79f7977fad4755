"""Save and reload a quantized model: one safetensors file plus a JSON manifest (format name and version).

Layout of a checkpoint directory:
  model.safetensors          every tensor of the model (QuantLinear buffers, bf16 embeddings/norms/lm_head)
  qerl_quantization.json     {"format": "qerl-quantized", "version": 1, "layers": {name: {format, shape, ...}}}
  config.json                the HF config, when the model has one
Loading never unpickles anything; a manifest of another format or version is refused, never guessed at.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from qerl.quantizers.layers import QuantLinear
from qerl.quantizers.weight import format_codec

CHECKPOINT_FORMAT = "qerl-quantized"
CHECKPOINT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "qerl_quantization.json"


class QuantCheckpointError(ValueError):
    """A quantized checkpoint is missing, of another format/version, or does not fit the model."""


def quantized_layers(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def save_quantized(model: nn.Module, directory: str | Path) -> Path:
    """Write `model` (with QuantLinear layers) to `directory`; returns the directory."""
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    layers = {
        name: {"format": m.format, "block_size": m.block_size, "in_features": m.in_features,
               "out_features": m.out_features, "tensors": list(m.quantized_tensors()), "bias": m.bias is not None}
        for name, m in quantized_layers(model).items()
    }
    if not layers:
        raise QuantCheckpointError(f"save_quantized: {type(model).__name__} has no QuantLinear layer; quantize it "
                                   "first (quantizer.quantize_model(model)) or save it with save_pretrained.")
    manifest = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "quant_formats": sorted({v["format"] for v in layers.values()}), "layers": layers}
    save_model(model, str(directory / WEIGHTS_FILE),
               metadata={"format": "pt", "qerl_format": CHECKPOINT_FORMAT, "qerl_version": str(CHECKPOINT_VERSION)})
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "save_pretrained"):
        config.save_pretrained(directory)
    return directory


def read_manifest(directory: str | Path, expect_format: str | None = None) -> dict:
    """The checked manifest of a checkpoint directory (raises QuantCheckpointError on any mismatch)."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise QuantCheckpointError(f"{directory} is not a qerl quantized checkpoint: expected {MANIFEST_FILE} and "
                                   f"{WEIGHTS_FILE} (written by qerl.quantizers.checkpoint.save_quantized).")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise QuantCheckpointError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}).") from exc
    if manifest.get("format") != CHECKPOINT_FORMAT or manifest.get("version") != CHECKPOINT_VERSION:
        raise QuantCheckpointError(
            f"{path}: checkpoint format {manifest.get('format')!r} version {manifest.get('version')!r}, but this qerl "
            f"reads format {CHECKPOINT_FORMAT!r} version {CHECKPOINT_VERSION}. Re-quantize the bf16 model with this "
            "qerl (`qerl quantize ...`) or use the qerl version that wrote it.")
    if expect_format is not None and manifest.get("quant_formats") != [expect_format]:
        raise QuantCheckpointError(f"{path}: holds {manifest.get('quant_formats')} weights, but {expect_format!r} was "
                                   "asked for. Point to a checkpoint of that format or change the quantizer.")
    from safetensors import safe_open

    with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("qerl_format") != CHECKPOINT_FORMAT or meta.get("qerl_version") != str(CHECKPOINT_VERSION):
        raise QuantCheckpointError(f"{directory / WEIGHTS_FILE}: its header says format {meta.get('qerl_format')!r} "
                                   f"version {meta.get('qerl_version')!r}, not what {MANIFEST_FILE} says; the "
                                   "directory mixes files of different checkpoints.")
    return manifest


def load_quantized(model: nn.Module, directory: str | Path, expect_format: str | None = None,
                   device: str | torch.device = "cpu") -> nn.Module:
    """Fill `model` (the same architecture, bf16, materialised) from a quantized checkpoint, in place.

    The layers the manifest names become QuantLinear; every other tensor is loaded strictly. A skeleton on the
    meta device is refused: its non-persistent buffers (rotary inv_freq) are in no file.
    """
    from safetensors import safe_open
    from safetensors.torch import load_model

    directory = Path(directory)
    manifest = read_manifest(directory, expect_format)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise QuantCheckpointError(f"load_quantized({directory}): the model has tensors on the meta device; build it "
                                   "on CPU/GPU (its non-persistent buffers such as rotary inv_freq are not in the file).")
    file = str(directory / WEIGHTS_FILE)
    with safe_open(file, framework="pt", device=str(device)) as f:
        for name, info in manifest["layers"].items():
            try:
                current = model.get_submodule(name)
            except AttributeError:
                raise QuantCheckpointError(f"{directory}: layer {name!r} of the checkpoint does not exist in "
                                           f"{type(model).__name__}; is it the same architecture?") from None
            shape = (info["out_features"], info["in_features"])
            have = (getattr(current, "out_features", None), getattr(current, "in_features", None))
            if have != shape:
                raise QuantCheckpointError(f"{directory}: layer {name!r} is {shape} in the checkpoint but "
                                           f"{have} in the model; is it the same architecture?")
            format_codec(info["format"])  # a clear error for a format whose plugin is missing
            tensors = {k: f.get_tensor(f"{name}.{k}") for k in info["tensors"]}
            bias = f.get_tensor(f"{name}.bias") if info["bias"] else None
            layer = QuantLinear(info["in_features"], info["out_features"], info["format"], tensors, bias, name=name,
                                block_size=info["block_size"])
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
    missing, unexpected = load_model(model, file, strict=False, device=str(device))
    if missing or unexpected:
        raise QuantCheckpointError(f"{directory}: the checkpoint does not fit {type(model).__name__}: missing "
                                   f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}.")
    return model
