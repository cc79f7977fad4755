"""`RandomInit`: a policy with random weights in a public architecture's shape (Qwen2.5 0.5B-32B, or tiny for tests)."""
from __future__ import annotations

import zlib
from typing import Any

import torch

from qerl.models.base import DEFAULT_SKIP, PolicyLoader, finish_policy, new_report, resolve_placement, resolve_quantizer
from qerl.models.byte_tokenizer import byte_tokenizer
from qerl.models.smollm2 import smollm2_tokenizer
from qerl.models.streaming import LoadError, quantize_loaded, stream_quantized
from qerl.registry import MODELS

_QWEN25 = {"model_type": "qwen2", "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
           "max_position_embeddings": 32768, "initializer_range": 0.02}

#: Public Qwen2.5-Instruct shapes (../shared/ENVIRONMENT.md) and a tiny Qwen2 for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(_QWEN25, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=320, tie_word_embeddings=True, max_position_embeddings=2048),
    "qwen2.5-0.5b": dict(_QWEN25, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-3b": dict(_QWEN25, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(_QWEN25, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "qwen2.5-14b": dict(_QWEN25, hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                        num_attention_heads=40, num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
    "qwen2.5-32b": dict(_QWEN25, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                        num_attention_heads=40, num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
}
_ALIASES = {"0.5b": "qwen2.5-0.5b", "3b": "qwen2.5-3b", "7b": "qwen2.5-7b", "14b": "qwen2.5-14b", "32b": "qwen2.5-32b"}


def preset_config(config: str | dict[str, Any] = "tiny", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config keys of a preset name (or a dict of overrides applied to `tiny`), plus `overrides`."""
    if isinstance(config, dict):
        base = {**PRESETS["tiny"], **config}
    else:
        key = _ALIASES.get(config.lower(), config.lower())
        if key not in PRESETS:
            raise LoadError(f"Unknown RandomInit config {config!r}. Known: {', '.join(PRESETS)} "
                            f"(also {', '.join(_ALIASES)}), or a dict of config keys.")
        base = dict(PRESETS[key])
    return {**base, **(overrides or {})}


def tensor_seed(seed: int, name: str) -> int:
    """One seed per tensor name, so a tensor's values do not depend on the order or grouping it is built in."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def random_tensor(name: str, shape, dtype: torch.dtype, device: torch.device, seed: int, std: float) -> torch.Tensor:
    """Norm weights are ones; every other tensor (Linear weights and biases, embeddings) ~ N(0, std^2), seeded
    by (seed, name) with a generator on `device` (values differ between CPU and CUDA, never between runs)."""
    tensor = torch.empty(shape, dtype=dtype, device=device)
    owner = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
    if owner.endswith("norm"):
        return tensor.fill_(1.0)
    generator = torch.Generator(device=device)
    generator.manual_seed(tensor_seed(seed, name))
    return tensor.normal_(0.0, std, generator=generator)


@MODELS.register()
class RandomInit(PolicyLoader):
    """Random weights in a public model shape (Qwen2.5 0.5B-32B, or tiny), for speed/memory work and tests.

    Args:
        config: a preset ("tiny", "qwen2.5-0.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b"; or
            "0.5b".."32b") or a dict of config keys applied on top of "tiny" (`model_type` "qwen2" or "llama").
        overrides: config keys applied on top of the preset (e.g. {"num_hidden_layers": 2}).
        seed: weights are a pure function of (seed, tensor name, device type).
        tokenizer: "auto" (bytes for vocabularies under 1024, else smollm2), "bytes" (259 ids, instant) or
            "smollm2" (the SmolLM2 GGUF tokenizer, 49,152 ids: no Qwen tokenizer exists offline, so token ids
            stay below 49,152 even though Qwen's embedding has 151,936+ rows).
        stream: build on the meta device and fill one decoder layer at a time on the target device, quantizing
            each before the next exists (default). False: build the whole model dense, then quantize.
    """

    def __init__(self, config: str | dict[str, Any] = "tiny", overrides: dict[str, Any] | None = None, seed: int = 0,
                 tokenizer: str = "auto", stream: bool = True) -> None:
        self.config = config
        self.overrides = overrides
        self.seed = seed
        self.tokenizer = tokenizer
        self.stream = stream
        preset_config(config, overrides)  # fail at construction on a bad preset name

    def hf_config(self):
        """The transformers config this loader builds."""
        from transformers import AutoConfig

        keys = preset_config(self.config, self.overrides)
        model_type = keys.pop("model_type", "qwen2")
        return AutoConfig.for_model(model_type, **keys)

    def make_tokenizer(self, vocab_size: int):
        choice = self.tokenizer if self.tokenizer != "auto" else ("bytes" if vocab_size < 1024 else "smollm2")
        makers = {"bytes": byte_tokenizer, "smollm2": smollm2_tokenizer}
        if choice not in makers:
            raise LoadError(f"RandomInit tokenizer={self.tokenizer!r} is not one of auto, bytes, smollm2.")
        tokenizer = makers[choice]()
        if len(tokenizer) > vocab_size:
            raise LoadError(f"RandomInit: the {choice!r} tokenizer has {len(tokenizer)} ids but vocab_size is "
                            f"{vocab_size}; raise vocab_size or use tokenizer='bytes'.")
        return tokenizer

    def load(self, quantizer=None, dtype=None, device=None, *, skip: tuple[str, ...] = DEFAULT_SKIP,
             measure_errors: bool = False):
        """(model, tokenizer); `last_report` says how much memory loading took (see `LoadReport`)."""
        from transformers import AutoModelForCausalLM

        quantizer = resolve_quantizer(quantizer)
        dtype, device = resolve_placement(dtype, device)
        cfg = self.hf_config()
        tokenizer = self.make_tokenizer(cfg.vocab_size)
        std = float(getattr(cfg, "initializer_range", 0.02))

        def source(name, shape, dt, dev):
            return random_tensor(name, shape, dt, dev, self.seed, std)

        report = new_report(self, quantizer, dtype, device, "streamed" if self.stream else "load-then-quantize")
        if self.stream:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
            model = stream_quantized(model, source, quantizer, tuple(skip), report, dtype, device, measure_errors)
        else:
            with torch.device(device):
                model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
            with torch.no_grad():
                for name, param in model.named_parameters():
                    param.copy_(source(name, param.shape, dtype, device))
            if quantizer is not None:
                quantize_loaded(model, quantizer, tuple(skip), report, measure_errors)
            else:
                report.dense_bytes = report.final_bytes = report.peak_tensor_bytes = sum(
                    p.numel() * p.element_size() for p in model.parameters())
        self.last_report = report
        return finish_policy(model, tokenizer)
