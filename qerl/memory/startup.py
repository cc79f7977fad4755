"""The memory plan of a `QeRLModule` at start-up: printed once the policy is built, with a warning when the run
will not fit the device, and `micro_batch_size: auto` resolved to the largest micro-batch that fits."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

from qerl.memory.engine import (
    GIB,
    EngineEstimate,
    describe,
    engine_as_run,
    one_sequence_kv,
    too_small_message,
    with_kv_cache,
)
from qerl.memory.estimate import (
    GB,
    HEADROOM,
    MemoryEstimate,
    MemoryPlanWarning,
    ModelShape,
    RunShape,
    auto_micro_batch,
    check_fits,
    estimate_memory,
    free_device_memory,
    weight_bits,
)
from qerl.models.logprobs import causal_lm
from qerl.parallel import world

MIB = 2**20

#: prompt length assumed when the datamodule sets no `max_prompt_tokens` and its prompts cannot be measured
DEFAULT_PROMPT_TOKENS = 256


def longest_prompt(datamodule) -> int | None:
    """Tokens of the longest formatted training prompt, when the datamodule has its tokenizer (else None).

    The plan sizes activations for this length: the 256-token default made the quickstart's ~40-token
    additions plan 12.3 GB for a run that peaks at 4.8 GB.
    """
    prepared, length = getattr(datamodule, "prepared", None), getattr(datamodule, "prompt_length", None)
    if not callable(prepared) or not callable(length) or getattr(datamodule, "tokenizer", None) is None:
        return None
    try:
        rows = prepared("train")
    except Exception:  # noqa: BLE001 - a data problem is reported by the data module itself, not by the plan
        return None
    return max((length(prompt) for prompt, _, _ in rows), default=None)


@dataclass(frozen=True)
class MemoryPlan:
    """The start-up plan: the estimate (None when the model's config cannot be read), the micro-batch to use and
    the colocated rollout engine's estimate (None without one) with the `gpu_memory_utilization` it would get."""

    estimate: MemoryEstimate | None
    micro_batch_size: int | str
    engine: EngineEstimate | None = None
    engine_utilization: float | None = None
    engine_sleep: bool | None = None  # `enable_sleep_mode: auto` as decided here (None: not asked)
    engine_kv_cache_gb: float | None = None  # the KV cache (GiB) cut to fit beside training under the rollout


def step_rows(module, datamodule=None) -> int:
    """Completions of one step of `module` (prompts per step from the datamodule's `batch_size` x group; under DDP
    that is one rank's share, as each rank draws its own batches)."""
    prompts = int(getattr(datamodule, "batch_size", 1) or 1) * int(getattr(module, "batches_per_step", 1))
    return prompts * int(module.sampling.n)


def rollout_rows(module, datamodule=None) -> int:
    """Completions one rollout call generates: the step's, or fewer when the backend bounds its calls."""
    return int(module.rollout.max_batch_rows or step_rows(module, datamodule))


def run_shape(module, datamodule=None) -> RunShape:
    """The sizes of one step of `module` (see `step_rows`)."""
    prompt_len = (getattr(datamodule, "max_prompt_tokens", None) or longest_prompt(datamodule)
                  or DEFAULT_PROMPT_TOKENS)
    rows = step_rows(module, datamodule)
    lora = module.lora
    micro = module.micro_batch_size if isinstance(module.micro_batch_size, int) else rows
    return RunShape(rows=rows, prompt_len=int(prompt_len), response_len=int(module.sampling.max_new_tokens),
                    micro_batch=micro, rollout_rows=rollout_rows(module, datamodule),
                    gradient_checkpointing=bool(module.gradient_checkpointing),
                    lora_rank=int(lora.rank) if lora is not None else 0,
                    lora_targets=tuple(lora.targets) if lora is not None else (),
                    packed=bool(getattr(module, "pack_groups", False)),
                    gradient_buffers=int(getattr(module, "gradient_buffers", 0)))


def torch_device_type(device) -> str:
    import torch

    return torch.device(device).type


def resident_bytes() -> float | None:
    """This process's resident memory now (Linux /proc), or None."""
    import os

    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


#: training rows that are tensors saved for backward
ACTIVATION_ROWS = ("activations", "layer inputs (checkpointed)", "one layer recomputed + grads")
#: resident bytes a CPU process keeps per byte of saved activations, beyond them: the forward's and backward's
#: freed temporaries, which the C allocator does not hand back or reuse in time. Measured with SmolLM2 (float32,
#: LoRA r16, pre-quantized NVFP4 base): RSS growth over a forward + backward was 1.97x, 1.98x and 2.07x the saved
#: tensors (8x38, 32x38 and 32x92 tokens), so the plan counts the activations twice.
CPU_RETAINED_PER_ACTIVATION_BYTE = 1.0


def release_free_heap() -> None:
    """Hand the memory the C allocator holds but nothing uses back to the system (glibc `malloc_trim`; elsewhere a
    no-op), so the resident size measured next is what the process uses: loading SmolLM2 whole in float32 and then
    quantizing it leaves ~0.4 GB of freed dense weights resident, which the plan would otherwise count twice."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass


def add_cpu_process_rows(estimate: MemoryEstimate, module, shape: ModelShape, dtype_bytes: int) -> None:
    """On a CPU the plan is the process's resident memory: add what a GPU plan leaves out - the dense copy of the
    4-bit layers that `dequantize_once_per_step` keeps through a step, the interpreter, torch and libraries
    (what the process holds now beyond the counted weights), and the freed temporaries of the update that the C
    allocator keeps resident (`CPU_RETAINED_PER_ACTIVATION_BYTE`)."""
    if getattr(module, "dequantize_once_per_step", False) and getattr(module, "quantizer", None) is not None:
        estimate.static["dense copy of 4-bit layers"] = shape.layer_linear_params() * shape.layers * dtype_bytes
    release_free_heap()
    rss = resident_bytes()
    if rss is not None:
        counted = sum(v for k, v in estimate.static.items() if k != "dense copy of 4-bit layers")
        estimate.static["process (torch, libraries)"] = max(0.0, rss - counted)
    activations = sum(v for k, v in estimate.training.items() if k in ACTIVATION_ROWS)
    estimate.training["freed temporaries kept (CPU)"] = CPU_RETAINED_PER_ACTIVATION_BYTE * activations


def device_budget(device) -> float | None:
    """Bytes this process may plan for on a CUDA `device`: free memory plus what it already holds (the loaded
    policy is part of the plan), times `HEADROOM`; None off CUDA."""
    import torch

    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return (free + torch.cuda.memory_allocated(device)) * HEADROOM


def device_total(device) -> float | None:
    """Bytes of a CUDA `device` (None off CUDA)."""
    import torch

    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    return float(torch.cuda.get_device_properties(torch.device(device)).total_memory)


def rollout_engine(module, total: float | None, free: float | None = None
                   ) -> tuple[EngineEstimate | None, EngineEstimate | None, float | None]:
    """The colocated engine of `module.rollout` (`RolloutBackend.engine_estimate`, e.g. `VLLM`'s) on a device of
    `total` bytes with `free` bytes free before it starts: (what it needs, what it will take, the
    gpu_memory_utilization it runs with; see `qerl.memory.engine.engine_as_run`); Nones without such an engine."""
    if total is None:
        return None, None, None
    need = module.rollout.engine_estimate(module.model, "cuda")
    if need is None:
        return None, None, None
    runs, util = engine_as_run(need, need.settings.utilization, total, free)
    message = too_small_message(need, runs, util, total, free)
    if message:
        warnings.warn(message, MemoryPlanWarning, stacklevel=3)
    return need, runs, util


def plan_for_module(module, datamodule=None, budget: float | None = None, echo=print,
                    total: float | None = None, free: float | None = None) -> MemoryPlan:
    """Estimate `module`'s peak (its policy must be built), resolve `micro_batch_size="auto"`, print the plan
    and warn (`MemoryPlanWarning`) when it exceeds the budget (default: the device's, see `device_budget`).

    A colocated engine (`module.rollout.engine_estimate`, e.g. vLLM's) is counted on a CUDA device (or whenever `total`,
    the device's bytes, is given; `free`: bytes free before the engine starts, default the device's now): its rows join the rollout phase, and the training phase keeps ~0 of it in
    sleep mode or all of it without (see `qerl.memory.estimate`).
    The module is only read; the caller takes the resolved `micro_batch_size` from the returned plan."""
    try:
        shape = ModelShape.from_config(causal_lm(module.model).config)
    except (AttributeError, TypeError) as exc:  # not a decoder-only config with the usual attribute names
        echo(f"qerl: no memory plan for {type(causal_lm(module.model)).__name__}: its config lacks {exc}.")
        return MemoryPlan(None, module.micro_batch_size)
    bits = weight_bits(module.quantizer)
    dtype_bytes = 4 if module.dtype_name in ("float32", "fp32") else 2
    run = run_shape(module, datamodule)
    budget = budget if budget is not None else device_budget(module.device)
    device = getattr(module, "device", None)
    total = total if total is not None else device_total(device)
    free = free if free is not None else free_device_memory(device) if total is not None else None
    need, engine, utilization = rollout_engine(module, total, free)
    micro = module.micro_batch_size
    sleep = None
    kv_cut = None
    if engine is not None and budget is not None and getattr(module.rollout, "enable_sleep_mode", None) == "auto":
        sleep, decided, engine = decide_sleep(shape, run, budget, bits, dtype_bytes, need, engine, micro == "auto",
                                              echo, stay_awake=bool(getattr(module, "train_during_rollout", False)))
        need, kv_cut = decided, cut_kv_cache_gb(need, decided)
        if kv_cut is not None:  # the engine stays awake beside the update: it asks for less
            engine, utilization = engine_as_run(need, need.settings.utilization, total, free)
    if micro == "auto":
        micro = auto_micro_batch(shape, run, budget, bits, dtype_bytes, engine=engine) if budget is not None else run.rows
        echo(f"qerl: micro_batch_size auto -> {micro} "
             f"({'fits the device budget' if budget is not None else 'no CUDA device: all rows at once'})")
    run = replace(run, micro_batch=micro)
    estimate = estimate_memory(shape, run, bits, dtype_bytes, engine=engine)
    if budget is None and getattr(module, "device", None) is not None and torch_device_type(module.device) == "cpu":
        add_cpu_process_rows(estimate, module, shape, dtype_bytes)
    echo(f"{estimate.table()}\n  (rows {run.rows}, prompt {run.prompt_len} + response {run.response_len} tokens, "
         f"micro-batch {run.micro_batch}, gradient checkpointing {run.gradient_checkpointing}, "
         f"{bits:.2f} bits/weight)")
    if engine is not None:
        echo(describe(need, engine, utilization, total))
    if world()[0] > 1:  # data parallel: rows, micro-batch and budget above are this rank's, on its own GPU
        echo(f"  (per rank: each of the {world()[0]} processes plans its own prompts and device)")
    check_fits(estimate, budget, where=f"{type(module).__name__} ({type(module.policy).__name__})")
    return MemoryPlan(estimate, micro, engine, utilization, sleep, kv_cut)


def with_sleep(engine: EngineEstimate, sleep: bool) -> EngineEstimate:
    return EngineEstimate(replace(engine.settings, sleep_mode=sleep), dict(engine.rows))


def decide_sleep(shape: ModelShape, run: RunShape, budget: float, bits: float, dtype_bytes: int,
                 need: EngineEstimate, engine: EngineEstimate, auto_micro: bool = False, echo=print,
                 stay_awake: bool = False) -> tuple[bool, EngineEstimate, EngineEstimate]:
    """`enable_sleep_mode: auto`: (sleep, need, engine with that setting). Off when the run fits `budget` with the
    engine awake through training, at the micro-batch sleep mode would allow (an awake engine must not cost the
    update a smaller micro-batch); on otherwise. Sleeping copies the engine's weights out and back every step
    (32B NVFP4: wake 0.91 s + sleep 0.44 s of a 13.0 s step on an H200), so it is only worth it when needed.

    `stay_awake` (training under the rollout, which needs the engine awake beside the update): instead of sleeping,
    the KV cache is cut to what fits (`awake_kv_cache`) - both returned estimates then carry it as a fixed
    `kv_cache_bytes`; sleep stays the answer only when not even one full-length sequence would fit."""
    asleep = with_sleep(engine, True)
    micro = auto_micro_batch(shape, run, budget, bits, dtype_bytes, engine=asleep) if auto_micro else run.micro_batch
    awake = estimate_memory(shape, replace(run, micro_batch=micro), bits, dtype_bytes, engine=with_sleep(engine, False))
    sleep = awake.peak > budget
    said = (f"with the engine awake through training the peak is {awake.peak / GB:.1f} GB of the {budget / GB:.1f} "
            f"GB budget, micro-batch {micro}")
    if sleep and stay_awake:
        fixed = need.settings.kv_cache_bytes is not None  # the recipe's own kv_cache_memory_gb: not ours to cut
        kv = None if fixed else awake_kv_cache(need, engine, awake.peak - budget)
        if kv is not None:
            held = kv / one_sequence_kv(need) if one_sequence_kv(need) else float("inf")
            echo(f"qerl: enable_sleep_mode auto -> off, KV cache cut from {engine.kv_cache / GB:.2f} to {kv / GB:.2f} "
                 f"GB (kv_cache_memory_gb {kv / GIB:.2f}): `model.init_args.train_during_rollout` needs the engine "
                 f"awake beside the update, and {said}; the cut cache holds {held:.0f} of the "
                 f"{need.settings.max_num_seqs} sequences at full length (vLLM preempts and recomputes past that)")
            return False, with_kv_cache(with_sleep(need, False), kv), with_kv_cache(with_sleep(engine, False), kv)
        why = ("`rollout.init_args.kv_cache_memory_gb` fixes the KV cache (lower it, or leave it unset to let the "
               "plan cut it)" if fixed else "not even one full-length sequence of KV cache fits beside the update "
               "(lower `model.init_args.micro_batch_size` or `rollout.init_args.max_model_len`)")
        echo(f"qerl: `model.init_args.train_during_rollout` cannot keep the engine awake: {said}, and {why}; the "
             "engine sleeps and the groups train after generation")
    echo(f"qerl: enable_sleep_mode auto -> {'on' if sleep else 'off'} ({said})")
    return sleep, with_sleep(need, sleep), with_sleep(engine, sleep)


def cut_kv_cache_gb(before: EngineEstimate, after: EngineEstimate) -> float | None:
    """The KV cache (GiB) `decide_sleep` fixed to keep the engine awake (`after`, from `before`), or None when it
    left the cache as it was - what the backend takes as `resolved_kv_cache_gb`."""
    cut = after.settings.kv_cache_bytes
    return None if cut == before.settings.kv_cache_bytes else cut / GIB


def awake_kv_cache(need: EngineEstimate, engine: EngineEstimate, excess: float) -> float | None:
    """The KV cache (bytes, whole MiB) of `engine` less `excess`, when it still holds one full-length sequence
    of `need`'s (vLLM does not start with less); None otherwise."""
    kv = float(math.floor((engine.kv_cache - excess) / MIB) * MIB)
    return kv if kv > 0 and kv >= one_sequence_kv(need) else None
