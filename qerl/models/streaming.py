"""Quantize-on-load: materialize a meta-device model one decoder layer at a time, quantize it, free its dense copy.

The whole model never sits in memory in its dense dtype: at any moment the resident tensors are the dense parts
that stay dense (embeddings, norms, lm_head), the packed 4-bit buffers of the layers done so far, and ONE decoder
layer in `dtype`. `stream_quantized` does it for any source that can produce a tensor by its state-dict name
(random init, safetensors); `quantize_loaded` is the simple path for a model already fully in memory.
"""
from __future__ import annotations

import resource
import time
from collections.abc import Callable

import torch
from torch import nn

from qerl.models.report import LoadReport
from qerl.quantizers.layers import QuantLinear

#: fill(name, shape, dtype, device) -> tensor holding the state-dict entry `name`
TensorSource = Callable[[str, torch.Size, torch.dtype, torch.device], torch.Tensor]


class LoadError(RuntimeError):
    """A model could not be built or filled; the message names the tensor or module and what to do."""


# ---------------------------------------------------------------------------------------------- byte counting
def tensor_bytes(module: nn.Module, include_meta: bool = False, dtype: torch.dtype | None = None) -> int:
    """Bytes of a module's parameters and buffers (tied tensors counted once); meta tensors only if asked,
    meta parameters counted at `dtype` when given (the size they will have once materialized)."""
    seen: set[int] = set()
    total = 0
    params = {id(p) for p in module.parameters()}
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_meta:
            if not include_meta or id(t) in seen:
                continue
            seen.add(id(t))
            cast = dtype is not None and id(t) in params and t.is_floating_point()
            size = torch.empty((), dtype=dtype).element_size() if cast else t.element_size()
            total += t.numel() * size
            continue
        key = t.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def quantized_modules(module: nn.Module) -> dict[str, nn.Module]:
    """Name -> QuantLinear for every quantized layer under `module`."""
    return {n: m for n, m in module.named_modules() if isinstance(m, QuantLinear)}


@torch.no_grad()
def relative_error(weight: torch.Tensor, quantized: nn.Module, rows: int = 4096) -> float:
    """||W - dequantize(Q(W))||_F / ||W||_F in float32, a few thousand rows at a time."""
    deq = quantized.dequantize(torch.float32)
    num = den = 0.0
    for w, d in zip(weight.split(rows), deq.split(rows)):
        w = w.float()
        num += float((w - d).pow(2).sum())
        den += float(w.pow(2).sum())
    return (num / den) ** 0.5 if den > 0 else 0.0


class MemoryMeter:
    """Tracks the most model-tensor bytes alive at once, and the allocator's peak on `device` above what the
    process already held when loading started (another model, a vLLM engine's KV cache)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_tensor_bytes = 0
        self.baseline = 0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.baseline = int(torch.cuda.memory_allocated(device))

    def note(self, model: nn.Module) -> int:
        now = tensor_bytes(model)
        self.peak_tensor_bytes = max(self.peak_tensor_bytes, now)
        return now

    def device_peak(self) -> tuple[int | None, str]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = int(torch.cuda.max_memory_allocated(self.device)) - self.baseline
            return peak, "torch.cuda.max_memory_allocated (above what was allocated before the load)"
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process RSS high-water mark (ru_maxrss)"


# ---------------------------------------------------------------------------------------------- quantizing
class _Scope(nn.Module):
    """Holds one submodule under its full dotted path, so `quantize_model` sees (and `skip` matches) full names."""

    def __init__(self, path: str, module: nn.Module) -> None:
        super().__init__()
        head, _, rest = path.partition(".")
        self.add_module(head, _Scope(rest, module) if rest else module)


def quantize_part(model: nn.Module, path: str, quantizer, skip: tuple[str, ...],
                  errors: dict[str, float] | None) -> None:
    """Quantize the Linear layers of `model.get_submodule(path)` in place; record relative errors into `errors`."""
    part = model.get_submodule(path) if path else model
    scope = _Scope(path, part) if path else part
    before = {}
    if errors is not None:  # references only: the dense weights live until their errors are measured
        before = {n: m.weight for n, m in scope.named_modules() if isinstance(m, nn.Linear)}
    quantizer.quantize_model(scope, skip=skip)
    if errors is not None:
        for name, layer in quantized_modules(scope).items():
            if name in before:
                errors[name] = relative_error(before[name], layer)
    before.clear()


def quantize_loaded(model: nn.Module, quantizer, skip: tuple[str, ...], report: LoadReport,
                    measure_errors: bool = False) -> nn.Module:
    """Load-then-quantize: the model is already whole in `dtype`; quantize every targeted Linear in place.

    Without a quantizer the model stays dense and the report records its size.
    """
    if quantizer is None:
        report.dense_bytes = report.final_bytes = report.peak_tensor_bytes = tensor_bytes(model)
        return model
    started = time.perf_counter()
    device = next(model.parameters()).device
    meter = MemoryMeter(device)
    report.dense_bytes = report.peak_layer_dense_bytes = meter.note(model)
    errors: dict[str, float] | None = {} if measure_errors else None
    quantize_part(model, "", quantizer, skip, errors)
    _finish_report(model, meter, report, started, errors)
    return model


# ---------------------------------------------------------------------------------------------- streaming
def decoder_layers_path(model: nn.Module) -> str:
    """Dotted path of the ModuleList of decoder layers (`model.layers` for Llama/Qwen2)."""
    layers = getattr(getattr(model.config, "get_text_config", lambda: model.config)(), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (layers is None or len(module) == layers):
            return name
    raise LoadError(f"Cannot stream {type(model).__name__}: found no ModuleList of {layers} decoder layers. "
                    "Load it whole instead (stream=False).")


def _param_groups(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """Canonical parameter name -> every (owner module, attribute) sharing it (tied weights share one entry)."""
    by_id: dict[int, tuple[str, list[tuple[nn.Module, str]]]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for pname, param in module.named_parameters(recurse=False):
            full = f"{mod_name}.{pname}" if mod_name else pname
            by_id.setdefault(id(param), (full, []))[1].append((module, pname))
    return {full: owners for full, owners in by_id.values()}


def _fill(groups, names, source: TensorSource, dtype, device) -> None:
    with torch.no_grad():
        for name in names:
            owners = groups[name]
            shape = getattr(owners[0][0], owners[0][1]).shape
            tensor = source(name, shape, dtype, device)
            if tuple(tensor.shape) != tuple(shape):
                raise LoadError(f"Tensor {name!r} has shape {tuple(tensor.shape)} but the model config expects "
                                f"{tuple(shape)}; the checkpoint does not match its config.json.")
            param = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())
            for module, attr in owners:
                setattr(module, attr, param)


def _rebuild_meta_buffers(model: nn.Module, device: torch.device) -> None:
    """Non-persistent buffers (rotary inv_freq) are computed in __init__: rebuild their modules from the config."""
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            try:
                fresh = type(module)(config=model.config)
            except TypeError as exc:
                raise LoadError(f"Module {name!r} ({type(module).__name__}) has buffers that were not materialized "
                                "and cannot be rebuilt from the config; load this model whole (stream=False).") from exc
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, fresh.to(device))


def stream_quantized(model: nn.Module, source: TensorSource, quantizer, skip: tuple[str, ...], report: LoadReport,
                     dtype: torch.dtype, device: torch.device, measure_errors: bool = False) -> nn.Module:
    """Fill a meta-device `model` from `source` layer by layer on `device`, quantizing each decoder layer at once.

    Dense parts outside the decoder layers (embeddings, final norm, lm_head) are filled first and stay dense.
    With `quantizer=None` the layers are only filled (a dense load that still never builds twice).
    """
    started = time.perf_counter()
    meter = MemoryMeter(device)
    report.dense_bytes = tensor_bytes(model, include_meta=True, dtype=dtype)
    groups = _param_groups(model)
    layers_path = decoder_layers_path(model)
    layers = model.get_submodule(layers_path)
    outside = [n for n in groups if not n.startswith(layers_path + ".")]
    _fill(groups, outside, source, dtype, device)
    _rebuild_meta_buffers(model, device)
    errors: dict[str, float] | None = {} if measure_errors else None
    for index in range(len(layers)):
        prefix = f"{layers_path}.{index}"
        _fill(groups, [n for n in groups if n.startswith(prefix + ".")], source, dtype, device)
        meter.note(model)
        report.peak_layer_dense_bytes = max(report.peak_layer_dense_bytes, tensor_bytes(layers[index]))
        if quantizer is not None:
            quantize_part(model, prefix, quantizer, skip, errors)
        for name in [n for n in groups if n.startswith(prefix + ".")]:
            del groups[name]  # its owners include the replaced nn.Linear: keeping them keeps every dense weight alive
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise LoadError(f"These tensors were never filled: {', '.join(leftover[:5])}"
                        f"{' ...' if len(leftover) > 5 else ''}. Load this model whole (stream=False).")
    _finish_report(model, meter, report, started, errors)
    return model


def _finish_report(model, meter: MemoryMeter, report: LoadReport, started: float, errors) -> None:
    report.final_bytes = meter.note(model)
    report.peak_tensor_bytes = meter.peak_tensor_bytes
    report.peak_device_bytes, report.peak_device_source = meter.device_peak()
    report.quantized_layers = len(quantized_modules(model))
    report.layer_errors = errors or {}
    report.seconds = time.perf_counter() - started
