"""The `VLLM` backend's side of the memory plan: the engine estimate for a policy, `gpu_memory_utilization: auto`.

The arithmetic is `qerl.memory.engine`'s; this file maps the backend's settings onto it (kept apart from
`backend.py`, which builds and drives the engine).
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from qerl.memory.engine import (
    BATCHED_TOKENS,
    EngineEstimate,
    EngineSettings,
    engine_as_run,
    estimate_engine,
    too_small_message,
)
from qerl.memory.estimate import GB, ModelShape, weight_bits
from qerl.models.logprobs import causal_lm

#: what `gpu_memory_utilization: auto` becomes on the CPU build (a fraction of RAM there; the KV cache is
#: `kv_cache_memory_gb`, 1 GB by default, so this only bounds the engine)
CPU_UTILIZATION = 0.3


def engine_estimate(backend, policy: nn.Module, device) -> EngineEstimate:
    """The memory of `backend`'s engine (a `VLLM`) for `policy` on one GPU of `device`'s kind."""
    lm = causal_lm(policy)
    on_cuda = torch.device(device).type == "cuda"
    packed = backend._packed_format(lm, on_cuda)[0]
    lora = backend._check_adapter(policy)
    settings = EngineSettings(
        max_num_seqs=backend.num_seqs, max_model_len=backend.max_model_len,
        dtype_bytes=4 if backend._engine_dtype(lm) == "float32" else 2,
        kv_dtype_bytes=1 if backend.kv_cache_dtype == "fp8" else None,
        packed_bits=weight_bits(packed.upper()) if packed else None,
        lora_rank=int(backend.max_lora_rank), lora_targets=tuple(lora["target_modules"]),
        kv_cache_bytes=None if backend.kv_cache_gb is None else backend.kv_cache_gb * 2**30,
        cuda_graphs=on_cuda and not backend.enforce_eager, sleep_mode=backend.sleep_mode and on_cuda,
        batched_tokens=int(backend.engine_kwargs.get("max_num_batched_tokens") or BATCHED_TOKENS),
        tensor_parallel_size=backend.tensor_parallel_size, utilization=backend.gpu_memory_utilization)
    return estimate_engine(ModelShape.from_config(lm.config), settings)


def resolve_utilization(backend, policy: nn.Module) -> float:
    """`gpu_memory_utilization` as a number: as given, or for "auto" the engine's need over the card's size, at
    most what is free now (`qerl.memory.engine.auto_utilization`); `CPU_UTILIZATION` on the CPU build, where the
    KV cache is `kv_cache_memory_gb`."""
    if backend.gpu_memory_utilization != "auto":
        return float(backend.gpu_memory_utilization)
    device = next(policy.parameters()).device
    if device.type != "cuda":
        return CPU_UTILIZATION
    total = torch.cuda.get_device_properties(device).total_memory
    need = engine_estimate(backend, policy, device)
    free = torch.cuda.mem_get_info(device)[0]
    runs, util = engine_as_run(need, "auto", total, free)
    message = too_small_message(need, runs, util, total, free)
    if message:
        raise ValueError(f"VLLM: {message}")
    print(f"qerl: gpu_memory_utilization auto -> {util:.2f} (the vLLM engine needs {need.need / GB:.2f} GB of "
          f"{total / GB:.1f} GB; KV cache {runs.kv_cache / GB:.2f} GB for {backend.num_seqs} x "
          f"{backend.max_model_len} tokens needs {need.kv_cache / GB:.2f} GB)", file=sys.stderr, flush=True)
    return util


def wake_message(exc: Exception, utilization: float, total: int, free: int, held: int) -> str:
    """One line for an engine that cannot wake after the update: what it needed, what the update left, what to lower.

    Sleep mode hands the engine's weights and KV cache back while the policy trains; waking maps them again. If
    the update's tensors still hold that room, the wake fails - a memory plan the card cannot keep."""
    gib = 2**30
    return (f"VLLM: the engine ran out of memory waking up after the update: it maps back up to "
            f"{utilization * total / gib:.1f} GiB (`rollout.init_args.gpu_memory_utilization` {utilization:g} of "
            f"{total / gib:.1f} GiB), {free / gib:.1f} GiB were free and the policy's tensors held {held / gib:.1f} "
            f"GiB. Lower `model.micro_batch_size` (the update's activations), or the engine's share "
            f"(`max_num_seqs`, `max_model_len`, `gpu_memory_utilization`). (vLLM said: "
            f"{str(exc).splitlines()[0][:200]})")
