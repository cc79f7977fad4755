"""`HFModel`: a policy from a Hugging Face folder (safetensors) or hub id, streamed layer by layer when quantized."""
from __future__ import annotations

import os
from contextlib import ExitStack

from qerl.models.base import DEFAULT_SKIP, PolicyLoader, finish_policy, new_report, resolve_placement, resolve_quantizer
from qerl.models.file_checks import check_safetensors
from qerl.models.prequantized import check_quantizer, folder_scheme, load_compressed
from qerl.models.smollm2 import ModelNotFoundError
from qerl.models.streaming import LoadError, quantize_loaded, stream_quantized
from qerl.registry import MODELS


def safetensors_files(folder: str) -> list[str]:
    """The *.safetensors files of a local model folder (sorted)."""
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors"))


@MODELS.register()
class HFModel(PolicyLoader):
    """A model and tokenizer from a Hugging Face folder with safetensors, or a hub id (standard from_pretrained).

    With a quantizer and a local safetensors folder the model is streamed: built on the meta device, each decoder
    layer read from the files straight onto the device, quantized, and its dense copy freed, so the whole model
    never sits in memory in `dtype`. Otherwise (hub ids, .bin checkpoints, stream=False) transformers loads the
    whole model and it is quantized afterwards. The hub is not reachable on the CPU machine; use folders.

    Args:
        path: a local folder (config.json, *.safetensors, tokenizer files) or a hub id.
        stream: None streams when quantizing a local safetensors folder; True insists; False loads whole.
    """

    def __init__(self, path: str, stream: bool | None = None) -> None:
        self.path = path
        self.stream = stream

    def _tokenizer(self):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError) as exc:
            if not os.path.isdir(self.path):
                raise ModelNotFoundError(self._not_found(exc)) from exc
            raise LoadError(f"HFModel: could not load a tokenizer from {self.path!r} ({exc}). The folder needs the "
                            "tokenizer files (tokenizer.json / tokenizer_config.json) next to config.json.") from exc

    def _not_found(self, exc: Exception) -> str:
        """A path that is no folder here, which the hub (or its cache) could not serve as a model id either."""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"HFModel: {self.path!r} is not a folder here ({os.getcwd()}), and as a Hugging Face hub id it could "
                f"not be loaded ({first}). Give the path of a model folder (config.json, *.safetensors, tokenizer "
                "files); a recipe's relative path counts from the folder qerl runs in.")

    def check_files(self) -> None:
        """A local folder has config.json and every *.safetensors header is whole (a hub id is not checked)."""
        if not os.path.isdir(self.path):
            local = self.path.startswith(("/", ".", "~")) or self.path.count("/") > 1 or \
                os.path.isdir(self.path.split("/")[0])  # `checkpoints/x` with a checkpoints/ folder here
            if os.path.exists(self.path) or local:
                raise ModelNotFoundError(f"HFModel: {self.path!r} is not a folder; give a Hugging Face model folder "
                                         "(config.json, *.safetensors, tokenizer files).")
            return
        if not os.path.isfile(os.path.join(self.path, "config.json")):
            raise ModelNotFoundError(f"HFModel: {self.path} has no config.json; is it a Hugging Face model folder?")
        for file in safetensors_files(self.path):
            check_safetensors(file)

    def load(self, quantizer=None, dtype=None, device=None, *, skip: tuple[str, ...] = DEFAULT_SKIP,
             measure_errors: bool = False):
        """(model, tokenizer); see the class docstring for when loading streams."""
        quantizer = resolve_quantizer(quantizer)
        dtype, device = resolve_placement(dtype, device)
        self.check_files()
        local = os.path.isdir(self.path)
        files = safetensors_files(self.path) if local else []
        scheme = folder_scheme(self.path) if local else None
        if scheme is not None:
            check_quantizer(scheme, quantizer, self.path)
            tokenizer = self._tokenizer()
            report = new_report(self, quantizer, dtype, device, "pre-quantized")
            model = load_compressed(self.path, files, scheme, quantizer, tuple(skip), report, dtype, device)
            self.last_report = report
            return finish_policy(model, tokenizer)
        stream = self.stream if self.stream is not None else (quantizer is not None and bool(files))
        if stream and not files:
            raise LoadError(f"HFModel(stream=True): {self.path!r} is not a local folder with *.safetensors files; "
                            "streaming reads safetensors only. Use stream=False.")
        tokenizer = self._tokenizer()
        report = new_report(self, quantizer, dtype, device, "streamed" if stream else "load-then-quantize")
        if stream:
            model = self._stream(files, quantizer, skip, report, dtype, device, measure_errors)
        else:
            model = self._whole(dtype).to(device)
            quantize_loaded(model, quantizer, tuple(skip), report, measure_errors)
        self.last_report = report
        return finish_policy(model, tokenizer)

    def _whole(self, dtype):
        from transformers import AutoModelForCausalLM

        try:
            return AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype)
        except OSError as exc:
            if not os.path.isdir(self.path):
                raise ModelNotFoundError(self._not_found(exc)) from exc
            raise ModelNotFoundError(f"HFModel: cannot load {self.path!r}: not a complete local folder ({exc}). "
                                     "Download the model to a folder elsewhere and pass its path.") from exc

    def _stream(self, files, quantizer, skip, report, dtype, device, measure_errors):
        import torch
        from safetensors import safe_open
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(self.path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        with ExitStack() as stack:
            where: dict[str, object] = {}
            for file in files:
                handle = stack.enter_context(safe_open(file, framework="pt", device=str(device)))
                for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    where[key] = handle

            def source(name, shape, dt, dev):
                handle = where.get(name)
                if handle is None:
                    raise LoadError(f"HFModel: tensor {name!r} (shape {tuple(shape)}) is in the model but in none of "
                                    f"{', '.join(os.path.basename(f) for f in files)}. Its names may be mapped by "
                                    "transformers on load: use HFModel(path, stream=False).")
                return handle.get_tensor(name).to(dtype=dt, device=dev)

            return stream_quantized(model, source, quantizer, tuple(skip), report, dtype, device, measure_errors)
