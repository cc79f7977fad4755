"""Checkpoints written by compressed-tensors' own compressor (what llm-compressor calls on save), for loader tests.

A tiny random Llama is given a compressed-tensors scheme (`apply_quantization_config`), calibrated the way
llm-compressor's min-max observer does (global scale from the tensor's amax, block scales from each group's
amax, computed by compressed-tensors' `generate_gparam` / `calculate_qparams`), compressed by `ModelCompressor`
and saved with `save_pretrained` + `update_config` - the file layout users get from llm-compressor.
"""
from __future__ import annotations

from pathlib import Path

import torch

LLAMA = {"model_type": "llama", "tie_word_embeddings": False}


def tiny_llama_and_tokenizer(seed: int = 0, **config):
    from qerl.models import RandomInit

    return RandomInit({**LLAMA, **config}, seed=seed, stream=False).load(dtype="bfloat16")


def calibrate(model: torch.nn.Module) -> None:
    """Min-max weight calibration of every module that has a compressed-tensors scheme."""
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

    with torch.no_grad():
        for module in model.modules():
            scheme = getattr(module, "quantization_scheme", None)
            if scheme is None or scheme.weights is None:
                continue
            weight = module.weight.float()
            global_scale = None
            if hasattr(module, "weight_global_scale"):
                global_scale = generate_gparam(weight.min(), weight.max())
                module.weight_global_scale.copy_(global_scale)
            groups = weight.reshape(weight.shape[0], -1, scheme.weights.group_size)
            scale, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), scheme.weights, global_scale=global_scale)
            module.weight_scale.copy_(scale.to(module.weight_scale.dtype))


def write_ct_checkpoint(folder: Path, preset: str = "NVFP4A16", ignore=("lm_head", "re:.*down_proj$"),
                        seed: int = 0, **config) -> tuple[torch.nn.Module, Path]:
    """Quantize a tiny random Llama with compressed-tensors `preset` and save it to `folder` (with a tokenizer).

    Returns the bf16 source model (before quantization) and the folder.
    """
    import copy

    import torch._dynamo
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config, preset_name_to_scheme

    model, tokenizer = tiny_llama_and_tokenizer(seed, **config)
    source = copy.deepcopy(model)
    qconfig = QuantizationConfig(config_groups={"group_0": preset_name_to_scheme(preset, ["Linear"])},
                                 ignore=list(ignore))
    apply_quantization_config(model, qconfig)
    calibrate(model)
    compressor = ModelCompressor.from_pretrained_model(model)
    # compressed-tensors rounds with a torch.compile'd helper; compiling it cold takes ~1 min on 2 cores
    with torch._dynamo.config.patch(disable=True):
        compressor.compress_model(model)
    model.save_pretrained(folder)
    compressor.update_config(str(folder))
    tokenizer.save_pretrained(folder)
    return source, Path(folder)
