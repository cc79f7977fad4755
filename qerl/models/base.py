"""The policy-loader extension point: where the model and tokenizer come from.

A loader is a plain-argument class (LightningCLI/jsonargparse builds it from YAML: `policy: {class_path:
GGUFModel}`); `load()` returns `(model, tokenizer)`, quantized when given a quantizer, and leaves a
`LoadReport` in `loader.last_report`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from qerl.models.report import LoadReport
from qerl.registry import QUANTIZERS

DEFAULT_SKIP = ("lm_head",)


class PolicyLoader(ABC):
    """Loads (model, tokenizer); quantizes on load when given a quantizer."""

    last_report: LoadReport | None = None

    @abstractmethod
    def load(self, quantizer=None, dtype=None, device=None):
        """Return (model, tokenizer).

        Args:
            quantizer: a `Quantizer` instance, a QUANTIZERS name ("NVFP4"), or None for a dense model.
            dtype: dtype of everything that stays dense (and of each layer before quantization); default bf16.
            device: where the model is built; default "cpu".
        Concrete loaders also take keyword-only `skip` (layer names kept dense, default ("lm_head",)) and
        `measure_errors` (fill `last_report.layer_errors`).
        """

    def check_files(self) -> None:
        """Name a missing or damaged model file before anything loads (headers only; raises `LoadError` or
        `ModelNotFoundError`). `qerl fit` calls it before the run folder exists; loaders without files skip it."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "last_report")
        return f"{type(self).__name__}({args})"


def resolve_quantizer(quantizer):
    """A Quantizer instance from an instance, a Quantizer class, a QUANTIZERS name, or None."""
    if quantizer is None or quantizer == "none":
        return None
    if isinstance(quantizer, str):
        return QUANTIZERS.get(quantizer)()
    if isinstance(quantizer, type):
        return quantizer()
    return quantizer


def resolve_placement(dtype, device) -> tuple[torch.dtype, torch.device]:
    """Defaults (bf16, cpu); dtype may be given as a string ("bfloat16", "float32")."""
    if dtype is None:
        dtype = torch.bfloat16
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"Unknown dtype {dtype!r}; use bfloat16, float16 or float32.")  # noqa: TRY004
        dtype = resolved
    device = torch.device(device or "cpu")
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return dtype, device


def new_report(loader: PolicyLoader, quantizer, dtype: torch.dtype, device: torch.device, mode: str) -> LoadReport:
    return LoadReport(source=repr(loader), mode=mode if quantizer is not None else "dense",
                      quantizer=type(quantizer).__name__ if quantizer is not None else None,
                      device=str(device), dtype=str(dtype).removeprefix("torch."))


def finish_policy(model, tokenizer):
    """Eval mode, pad token set on the tokenizer and on the generation config."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.pad_token_id = tokenizer.pad_token_id
        if generation.eos_token_id is None:
            generation.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def load_policy(loader: PolicyLoader, quantizer=None, dtype=torch.bfloat16, device="cpu",
                skip: tuple[str, ...] = DEFAULT_SKIP):
    """(model, tokenizer) from `loader`, quantized on load with `quantizer` (instance, name or None)."""
    return loader.load(quantizer=quantizer, dtype=dtype, device=device, skip=skip)
