"""Load a pre-quantized compressed-tensors folder (llm-compressor or `qerl quantize --format compressed-tensors`).

The packed codes, block scales and global scales of every quantized Linear go straight into `QuantLinear`
buffers - nothing is dequantized or quantized again, and no dense copy of those layers exists at any point: the
model is built on the meta device, every tensor's name, dtype and shape is checked against the config from the
safetensors headers (before a byte is read), then the quantized layers are filled from the files and the dense
rest (embeddings, norms, `ignore`d Linears, lm_head) is streamed in as `HFModel` streams a dense folder.

compressed-tensors stores the NVFP4 global scale as a divisor d (value = e2m1 * scale / d); qerl multiplies by
g = 1/d. A checkpoint written by qerl also records its exact g per layer in the safetensors header
(`qerl_nvfp4_global_scales`), used when it still agrees with the stored d, so qerl's own export reloads bit for bit.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from qerl.models.report import LoadReport
from qerl.models.streaming import LoadError, stream_quantized, tensor_bytes
from qerl.quantizers.compressed_tensors import GLOBAL_SCALES_METADATA
from qerl.quantizers.compressed_tensors_scheme import CompressedScheme, SchemeError, read_scheme

#: safetensors dtype names of the stored tensors, by suffix
_DTYPES = {"weight_packed": ("U8",), "weight_scale": ("F8_E4M3", "U8"), "weight_global_scale": ("F32",)}
_TORCH = {"U8": torch.uint8, "F8_E4M3": torch.float8_e4m3fn, "F32": torch.float32}


@dataclass(frozen=True)
class CompressedSource:
    """Where a pre-quantized policy came from, and the checksum of its stored tensors right after loading."""

    path: str
    format: str
    fingerprint: dict
    files: dict  # file path -> (size, mtime_ns) when loaded: a folder rewritten since is not the loaded model

    def folder_unchanged(self) -> bool:
        """Whether every file the model was read from is still there with the same size and modification time."""
        return all(os.path.isfile(f) and (os.stat(f).st_size, os.stat(f).st_mtime_ns) == v
                   for f, v in self.files.items())


def folder_scheme(folder: str) -> CompressedScheme | None:
    """The compressed-tensors scheme of a model folder, None when its config.json has no quantization_config."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as exc:
        raise LoadError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}).") from exc
    if not config.get("quantization_config"):
        return None
    try:
        return read_scheme(config["quantization_config"], path)
    except SchemeError as exc:
        raise LoadError(str(exc)) from None


def check_quantizer(scheme: CompressedScheme, quantizer, folder: str) -> None:
    """The recipe's quantizer must be the checkpoint's format (a clear error otherwise)."""
    name = scheme.format.upper()
    if quantizer is None:
        raise LoadError(f"{folder} holds pre-quantized {name} weights ({scheme.compressed_format}) but no quantizer "
                        f"was given; set the quantizer to {name} (recipe `model.init_args.quantizer: {name}`, CLI "
                        f"`--quantizer {name}`). qerl does not dequantize a pre-quantized checkpoint.")
    if quantizer.format != scheme.format or quantizer.block_size != scheme.block_size:
        raise LoadError(f"{folder} holds {name} weights ({scheme.compressed_format}, block {scheme.block_size}) but "
                        f"the quantizer is {type(quantizer).__name__} ({quantizer.format}, block "
                        f"{quantizer.block_size}); set the quantizer to {name}, or quantize the bf16 model instead.")


class _Headers:
    """name -> (open safetensors handle) over a folder's files; shapes and dtypes read from the headers only."""

    def __init__(self, stack: ExitStack, files: list[str], device: torch.device) -> None:
        self.files = files
        self.where: dict[str, object] = {}
        self.metadata: dict[str, str] = {}
        from safetensors import safe_open

        for file in files:
            handle = stack.enter_context(safe_open(file, framework="pt", device=str(device)))
            self.metadata.update(handle.metadata() or {})
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                self.where[key] = handle

    def shape_dtype(self, name: str) -> tuple[tuple[int, ...], str] | None:
        handle = self.where.get(name)
        if handle is None:
            return None
        piece = handle.get_slice(name)
        return tuple(piece.get_shape()), piece.get_dtype()

    def read(self, name: str) -> torch.Tensor:
        return self.where[name].get_tensor(name)

    def missing(self, name: str, what: str) -> LoadError:
        files = ", ".join(os.path.basename(f) for f in self.files)
        return LoadError(f"checkpoint tensor {name!r} ({what}) is missing from {files}; the folder holds a partial "
                         "or mismatched checkpoint - write it again (llm-compressor / `qerl quantize`).")


def _expected(scheme: CompressedScheme, out_f: int, in_f: int) -> dict[str, tuple[int, ...]]:
    shapes = {"weight_packed": (out_f, in_f // 2), "weight_scale": (out_f, in_f // scheme.block_size)}
    if "weight_global_scale" in scheme.suffixes:
        shapes["weight_global_scale"] = (1,)
    return shapes


def check_checkpoint(model: nn.Module, scheme: CompressedScheme, headers: _Headers,
                     skip: tuple[str, ...]) -> list[str]:
    """Names of the Linears stored packed; raises LoadError naming the first tensor that disagrees with the config."""
    from qerl.quantizers.base import _matches

    packed = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        stored = headers.shape_dtype(f"{name}.weight_packed") is not None
        if not scheme.quantizes(name, module):
            if stored:
                raise LoadError(f"checkpoint tensor {name + '.weight_packed'!r} is packed, but the quantization_config "
                                f"ignores {name!r} (or does not target it); the config and the weights disagree.")
            continue
        if module.in_features % scheme.block_size:
            raise LoadError(f"layer {name!r}: in_features={module.in_features} is not a multiple of the "
                            f"{scheme.format} block {scheme.block_size}; the checkpoint cannot hold it packed.")
        for suffix, shape in _expected(scheme, module.out_features, module.in_features).items():
            found = headers.shape_dtype(f"{name}.{suffix}")
            if found is None:
                raise headers.missing(f"{name}.{suffix}", f"{scheme.compressed_format} needs shape {shape}")
            if found[0] != shape and not (suffix == "weight_global_scale" and found[0] == ()):
                raise LoadError(f"checkpoint tensor {name + '.' + suffix!r} has shape {found[0]} but config.json's "
                                f"{type(module).__name__} ({module.out_features}x{module.in_features}) needs {shape}; "
                                "the checkpoint does not match its config.json.")
            if found[1] not in _DTYPES[suffix] or (suffix == "weight_scale" and _TORCH[found[1]] != _scale_dtype(scheme)):
                raise LoadError(f"checkpoint tensor {name + '.' + suffix!r} is {found[1]}, but {scheme.compressed_format} "
                                f"stores it as {_DTYPES[suffix][0] if suffix != 'weight_scale' else _scale_dtype(scheme)}.")
        if _matches(name, skip):
            raise LoadError(f"`skip` names {name!r}, which the checkpoint stores as packed {scheme.format}; qerl does not "
                            "dequantize pre-quantized layers. Leave it out of skip (skip=[] for lm_head).")
        packed.append(name)
    for name, param in model.named_parameters():
        owner = name.rpartition(".")[0]
        if owner in packed:
            continue
        found = headers.shape_dtype(name)
        if found is None:
            raise headers.missing(name, f"shape {tuple(param.shape)}")
        if found[0] != tuple(param.shape):
            raise LoadError(f"checkpoint tensor {name!r} has shape {found[0]} but config.json implies "
                            f"{tuple(param.shape)}; the checkpoint does not match its config.json.")
    if not packed:
        raise LoadError(f"the quantization_config targets {list(scheme.targets)} but no Linear of the model matches; "
                        "the checkpoint does not match its config.json.")
    return packed


def _scale_dtype(scheme: CompressedScheme) -> torch.dtype:
    return torch.float8_e4m3fn if scheme.format == "nvfp4" else torch.uint8


def _global_scale(name: str, headers: _Headers, exact: dict[str, str]) -> torch.Tensor:
    """qerl's multiplier g from the stored divisor d: the exact g qerl recorded when 1/g still gives d, else 1/d."""
    divisor = headers.read(f"{name}.weight_global_scale").float().reshape(())
    if not bool(torch.isfinite(divisor)) or float(divisor) <= 0:
        raise LoadError(f"checkpoint tensor {name + '.weight_global_scale'!r} is {float(divisor)}; a global scale "
                        "divisor must be finite and > 0.")
    if name in exact:
        recorded = torch.tensor(float.fromhex(exact[name]), dtype=torch.float32, device=divisor.device)
        if torch.equal(torch.reciprocal(recorded), divisor):
            return recorded
    return torch.reciprocal(divisor)


def fill_packed(model: nn.Module, names: list[str], scheme: CompressedScheme, headers: _Headers) -> None:
    """Swap each packed meta Linear for a QuantLinear holding the stored tensors as they are."""
    from qerl.quantizers.layers import QuantLinear

    exact = json.loads(headers.metadata.get(GLOBAL_SCALES_METADATA, "{}"))
    for name in names:
        linear = model.get_submodule(name)
        tensors = {"codes": headers.read(f"{name}.weight_packed"), "scales": headers.read(f"{name}.weight_scale")}
        if scheme.format == "nvfp4":
            tensors["global_scale"] = _global_scale(name, headers, exact)
        bias = None
        if linear.bias is not None:
            if headers.shape_dtype(f"{name}.bias") is None:
                raise headers.missing(f"{name}.bias", f"shape ({linear.out_features},)")
            bias = headers.read(f"{name}.bias").to(torch.bfloat16)
        layer = QuantLinear(linear.in_features, linear.out_features, scheme.format, tensors, bias=bias, name=name,
                            block_size=scheme.block_size)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)


def load_compressed(folder: str, files: list[str], scheme: CompressedScheme, quantizer, skip: tuple[str, ...],
                    report: LoadReport, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The model of a compressed-tensors folder: packed layers as stored, the dense rest in `dtype` on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from qerl.quantizers.fingerprint import stored_fingerprint

    check_quantizer(scheme, quantizer, folder)
    if not files:
        raise LoadError(f"{folder}: config.json names a compressed-tensors checkpoint but the folder has no "
                        "*.safetensors file.")
    config = AutoConfig.from_pretrained(folder)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the layers are qerl's QuantLinear; transformers must not quantize again
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    report.mode = "pre-quantized"
    report.dense_bytes = tensor_bytes(model, include_meta=True, dtype=dtype)
    with ExitStack() as stack:
        headers = _Headers(stack, files, device)
        packed = check_checkpoint(model, scheme, headers, tuple(skip))
        fill_packed(model, packed, scheme, headers)

        def source(name, shape, dt, dev):
            if name not in headers.where:
                raise headers.missing(name, f"shape {tuple(shape)}")
            return headers.read(name).to(dtype=dt, device=dev)

        dense_bytes = report.dense_bytes
        model = stream_quantized(model, source, None, (), report, dtype, device)
        report.dense_bytes = dense_bytes
    stamps = {os.path.abspath(f): (os.stat(f).st_size, os.stat(f).st_mtime_ns)
              for f in [*files, os.path.join(folder, "config.json")]}
    started = time.perf_counter()
    fingerprint = stored_fingerprint(model)
    report.checksum_seconds = time.perf_counter() - started
    report.seconds += report.checksum_seconds
    model.qerl_compressed_source = CompressedSource(os.path.abspath(folder), scheme.format, fingerprint, stamps)
    return model
