"""GPU memory of the colocated vLLM rollout engine, and the `gpu_memory_utilization` that gives it what it needs.

vLLM (0.22) lets an engine use `gpu_memory_utilization x total device memory` for its own weights, activations,
KV cache and CUDA graphs (what the process held before - the policy - is outside that budget); whatever the
weights, the profiling run and the graphs leave of the budget becomes KV cache. The engine needs

    weights   linear layers: packed 4-bit (NVFP4 4.5, MXFP4 4.25 bits a weight) when served packed, else the
              engine dtype (2 bytes, 4 for float32); embeddings, lm_head, norms and biases in the engine dtype
    LoRA slot one adapter of `max_lora_rank` on every target, engine dtype (vLLM preallocates it)
    KV cache  max_num_seqs x max_model_len x (2 x layers x kv_heads x head_dim x dtype bytes): every sequence
              at full length, the most a run can use (or `kv_cache_memory_gb`, when set)
    allowance the profiling forward of `batched_tokens` tokens (MLP: gate+up, activation, residual), the
              sampler's float32 logits of max_num_seqs rows, CUDA graphs and non-torch workspaces (constants below)

With tensor parallelism each GPU holds 1/tp of weights, LoRA and KV cache.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from qerl.memory.estimate import GB, HEADROOM, ModelShape

GIB = 2**30
#: tokens of vLLM's profiling forward: its default `max_num_batched_tokens` for the offline `LLM` class on a card
#: of 70 GiB or more (8192 below); `engine_kwargs.max_num_batched_tokens` replaces it
BATCHED_TOKENS = 16384
#: CUDA graphs, an upper bound: vLLM 0.22 estimated 0.03 GiB for a tiny model (graphs captured up to max_num_seqs)
GRAPH_BYTES = 0.5 * GIB
#: non-torch memory vLLM counts in its budget (cuBLAS / attention workspaces, allocator fragmentation)
WORKSPACE_BYTES = 0.5 * GIB
#: sampler copies of the float32 logits per decoded row (logits, processed log-probs, probabilities)
SAMPLER_COPIES = 3


@dataclass(frozen=True)
class EngineSettings:
    """What the engine's memory depends on besides the model shape.

    Attributes:
        max_num_seqs, max_model_len: sequences decoded at once and their longest prompt + completion.
        dtype_bytes: bytes per value of the engine dtype (2 for bf16/fp16, 4 for float32).
        kv_dtype_bytes: bytes per KV-cache value (1 for an fp8 KV cache; None: `dtype_bytes`).
        packed_bits: bits per weight of the linear layers served packed (None: served dense in the engine dtype).
        lora_rank, lora_targets: the LoRA slot vLLM preallocates (`max_lora_rank` on the adapter's targets).
        kv_cache_bytes: a fixed KV cache (`kv_cache_memory_gb`) instead of the full-length one.
        cuda_graphs: graphs are captured (not `enforce_eager`).
        sleep_mode: `enable_sleep_mode`: weights go to the CPU and the KV cache is dropped while training.
        batched_tokens: tokens of the profiling forward (vLLM's `max_num_batched_tokens`).
        tensor_parallel_size: GPUs the engine is sharded over.
        utilization: the backend's `gpu_memory_utilization` setting ("auto" or a number).
    """

    max_num_seqs: int
    max_model_len: int
    dtype_bytes: int = 2
    kv_dtype_bytes: int | None = None
    packed_bits: float | None = None
    lora_rank: int = 0
    lora_targets: tuple[str, ...] = ()
    kv_cache_bytes: float | None = None
    cuda_graphs: bool = True
    sleep_mode: bool = False
    batched_tokens: int = BATCHED_TOKENS
    tensor_parallel_size: int = 1
    utilization: float | str = "auto"


@dataclass
class EngineEstimate:
    """Bytes the engine takes on one GPU while awake (`rows`; `need` their sum) and through training
    (`during_training`)."""

    settings: EngineSettings
    rows: dict[str, float] = field(default_factory=dict)

    @property
    def need(self) -> float:
        return sum(self.rows.values())

    @property
    def kv_cache(self) -> float:
        return self.rows["vLLM KV cache"]

    @property
    def fixed(self) -> float:
        """Everything but the KV cache: what vLLM takes out of its budget before it sizes the cache."""
        return self.need - self.kv_cache

    @property
    def during_training(self) -> float:
        """Held through the training phase: graphs and workspaces in sleep mode, everything without it."""
        return asleep_bytes(self.settings) if self.settings.sleep_mode else self.need

    def kv_cache_memory_gb(self) -> float:
        """The `kv_cache_memory_gb` (GiB, as vLLM's kv_cache_memory_bytes) equal to this estimate's KV cache."""
        return self.kv_cache / GIB

    def with_budget(self, utilization: float, total: float) -> EngineEstimate:
        """What the engine takes with a numeric `gpu_memory_utilization` on a `total`-byte device: vLLM fills the
        budget, so the KV cache is the budget minus everything else (never below 0); a fixed KV cache is kept."""
        if self.settings.kv_cache_bytes is not None:
            return self
        rows = dict(self.rows)
        rows["vLLM KV cache"] = max(0.0, utilization * total - self.fixed)
        return EngineEstimate(self.settings, rows)


def with_kv_cache(engine: EngineEstimate, kv_bytes: float) -> EngineEstimate:
    """`engine` with a fixed KV cache of `kv_bytes` (as `kv_cache_memory_gb` gives)."""
    rows = dict(engine.rows)
    rows["vLLM KV cache"] = float(kv_bytes)
    return EngineEstimate(replace(engine.settings, kv_cache_bytes=float(kv_bytes)), rows)


def kv_bytes_per_token(shape: ModelShape, dtype_bytes: int) -> int:
    """K and V of every layer for one token."""
    return 2 * shape.layers * shape.kv_dim * dtype_bytes


def estimate_engine(shape: ModelShape, settings: EngineSettings) -> EngineEstimate:
    """The engine's memory on one GPU (see the module docstring)."""
    s, tp = settings, settings.tensor_parallel_size
    linear = shape.layer_linear_params() * shape.layers
    dense = shape.embedding_params() + shape.layer_small_params() * shape.layers
    linear_bytes = linear * s.packed_bits / 8 if s.packed_bits else linear * s.dtype_bytes
    est = EngineEstimate(s)
    est.rows["vLLM weights"] = (linear_bytes + dense * s.dtype_bytes) / tp
    est.rows["vLLM LoRA slot"] = (shape.lora_params(s.lora_rank, s.lora_targets) * s.dtype_bytes / tp
                                  if s.lora_rank else 0.0)
    full = s.max_num_seqs * s.max_model_len * kv_bytes_per_token(shape, s.kv_dtype_bytes or s.dtype_bytes) / tp
    est.rows["vLLM KV cache"] = float(s.kv_cache_bytes) if s.kv_cache_bytes is not None else full
    tokens = s.batched_tokens
    profiling = tokens * s.dtype_bytes * (3 * shape.intermediate + 2 * shape.hidden) / tp
    profiling += SAMPLER_COPIES * s.max_num_seqs * shape.vocab * 4
    est.rows["vLLM activations + graphs"] = profiling + (GRAPH_BYTES if s.cuda_graphs else 0) + WORKSPACE_BYTES
    return est


def asleep_bytes(settings: EngineSettings) -> float:
    """What a sleeping engine keeps on the GPU: its CUDA graphs and workspaces (weights and KV cache are gone)."""
    return (GRAPH_BYTES if settings.cuda_graphs else 0.0) + WORKSPACE_BYTES


#: memory "auto" leaves free when it has to settle for what the device has: at least 1 GiB (vLLM's start-up
#: check needs room) and the plan's headroom (1 - HEADROOM of the card), so the plan's rollout phase still fits
FREE_MARGIN = 1 * GIB


def free_margin(total: float) -> float:
    return max(FREE_MARGIN, (1 - HEADROOM) * total)


def auto_utilization(need: float, total: float, free: float | None = None) -> float:
    """The `gpu_memory_utilization` that gives an engine needing `need` bytes exactly that on a `total`-byte
    device: need / total rounded up to 0.01. With `free` (bytes free when the engine starts; vLLM refuses a
    budget above it) at most (free - `free_margin`) / total rounded down: the KV cache then holds fewer
    full-length sequences, and vLLM schedules fewer at once."""
    util = math.ceil(round(need / total * 100, 6)) / 100
    if free is not None:
        util = min(util, math.floor(round((free - free_margin(total)) / total * 100, 6)) / 100)
    return util


def engine_as_run(need: EngineEstimate, utilization: float | str, total: float, free: float | None = None
                  ) -> tuple[EngineEstimate, float]:
    """(what the engine takes, the utilization it runs with) for a `gpu_memory_utilization` setting ("auto" or
    a number) on a `total`-byte device with `free` bytes free at its start."""
    util = auto_utilization(need.need, total, free) if utilization == "auto" else float(utilization)
    return need.with_budget(util, total), util


def one_sequence_kv(need: EngineEstimate) -> float:
    """KV bytes of one `max_model_len` sequence: vLLM does not start with less."""
    return need.kv_cache / max(1, need.settings.max_num_seqs) if need.settings.kv_cache_bytes is None else 0.0


def too_small_message(need: EngineEstimate, runs: EngineEstimate, util: float, total: float,
                      free: float | None) -> str | None:
    """Why vLLM will refuse to start with `util` (its KV cache cannot hold one `max_model_len` sequence), or None
    when it can; the same line for the start-up plan (a warning) and the backend's setup (an error)."""
    if runs.kv_cache >= one_sequence_kv(need):
        return None
    setting, s = need.settings.utilization, need.settings
    text = (f"`rollout.init_args.gpu_memory_utilization` {setting} ({util:.2f}) gives the vLLM engine "
            f"{util * total / GB:.1f} GB, which leaves {runs.kv_cache / GB:.2f} GB of KV cache after its weights and "
            f"allowance ({need.fixed / GB:.2f} GB), less than one {s.max_model_len}-token sequence "
            f"({one_sequence_kv(need) / GB:.2f} GB): vLLM will refuse to start. ")
    if setting == "auto":
        free_text = f"{free / GB:.1f} GB" if free is not None else "the free memory"
        return text + (f"auto is capped by what is free ({free_text} of {total / GB:.1f} GB, less a margin): lower "
                       "`rollout.init_args.max_model_len`, or free GPU memory (a smaller policy or engine).")
    return text + (f"Raise it (the engine needs {auto_utilization(need.need, total):.2f} for every sequence at full "
                   "length), lower `rollout.init_args.max_model_len`, or free GPU memory.")


def describe(need: EngineEstimate, runs: EngineEstimate, util: float, total: float) -> str:
    """One line for the printed plan: what the engine needs and the utilization it runs with."""
    s = need.settings
    utilization = s.utilization
    text = (f"  (vLLM engine needs {need.need / GB:.2f} GB: KV cache {s.max_num_seqs} seqs x {s.max_model_len} tokens "
            f"= {need.kv_cache / GB:.2f} GB, equivalent kv_cache_memory_gb {need.kv_cache_memory_gb():.2f}; "
            f"gpu_memory_utilization {utilization}{f' -> {util:.2f}' if utilization == 'auto' else ''} of "
            f"{total / GIB:.1f} GiB, sleep mode {'on' if s.sleep_mode else 'off'}")
    if s.kv_cache_bytes is None and runs.kv_cache < need.kv_cache:
        text += f"; its KV cache holds {runs.kv_cache / one_sequence_kv(need):.1f} full-length sequences"
    return text + ")"
