"""`VLLM`: rollouts from a colocated vLLM engine that holds the policy's base weights; LoRA, norms and AQN synced in.

Importing this module does not import vllm; `setup` does (and says which extra to install if it is missing).
"""
from __future__ import annotations

import os
import shutil
import time
import warnings
import weakref
from typing import Any, Literal

import torch
from torch import nn

from qerl.memory.engine import EngineEstimate
from qerl.models.logprobs import causal_lm
from qerl.models.mismatch import mismatch
from qerl.parallel import world
from qerl.quantizers.fused import unshared_tensor_scales
from qerl.registry import ROLLOUT_BACKENDS
from qerl.rollout.base import RolloutBackend
from qerl.rollout.vllm import engine, ir_norms, memory, ranks, recompute, scheduling, worker  # ranks: a rank each
from qerl.rollout.vllm.checks import check_adapter, check_settings, warn_dense
from qerl.rollout.vllm.engine import engine_name, scratch_dir
from qerl.rollout.vllm.host_copy import to_host
from qerl.rollout.vllm.lora_configs import check_folder, handed_to_engine
from qerl.rollout.vllm.noise import EngineNoise
from qerl.rollout.vllm.norms import float32_rms_norms, wants_float32_norms
from qerl.rollout.vllm.num_seqs import AUTO_MAX_SEQS, auto_num_seqs, describe_pick
from qerl.rollout.vllm.outputs import check_finite_logprobs, check_lengths, rollout_from_outputs
from qerl.rollout.vllm.sleep import EngineSleep
from qerl.rollout.vllm.stream import EngineStream
from qerl.types import Rollout, SamplingConfig


@ROLLOUT_BACKENDS.register()
class VLLM(EngineNoise, EngineSleep, EngineStream, RolloutBackend):
    """Generates with a colocated vLLM engine; the trained LoRA (and norms) are pushed in after every step.

    The engine is built in `setup` from the policy's base weights: on CUDA an NVFP4 base goes in as a
    compressed-tensors checkpoint (vLLM's FP4 kernels), otherwise the base is dequantized to `dtype`.
    The adapter is handed over in memory (`lora_transfer: memory`) or through a tmpfs folder
    (`folder`); AQN noise is added to the engine's own RMSNorm layers (the same Z as on the policy; float32
    weights when the policy keeps its norms in float32) and copied back out bit-exactly after generation. Log-probs in the Rollout are the engine's
    (after temperature and top-p); `last_metrics` reports the engine/policy mismatch.

    Args:
        gpu_memory_utilization: fraction of GPU memory vLLM may take for its weights, activations, KV cache and
            CUDA graphs (on the CPU build: of RAM). "auto": what the engine needs (`engine_estimate`: weights, LoRA
            slot, max_num_seqs x max_model_len of KV cache, profiling and graph allowance) over the card's size,
            rounded up to 0.01, resolved in `setup` (`resolved_utilization`); on the CPU build 0.3.
        max_model_len: longest prompt + completion the engine serves.
        tensor_parallel_size: GPUs the engine shards over (under DDP: groups of that many ranks share one engine,
            see `qerl.rollout.vllm.ranks` and docs/multi-gpu.md).
        enable_sleep_mode: free the engine's weights/KV cache while training (`release_memory`), wake to generate.
            "auto": the start-up memory plan turns it on only when the run would not fit with the engine awake
            through training (sleeping costs a copy of the engine's weights out and in every step).
        dtype: engine dtype ("auto": the policy's dense dtype, float16 becomes bfloat16).
        max_lora_rank: engine's LoRA rank limit (None: the smallest vLLM value >= the adapter's rank).
        kv_cache_memory_gb: fixed KV-cache size (the CPU build's default here is 1 GB), overriding the fraction.
            Unset, with `train_during_rollout` and `enable_sleep_mode: auto`, the memory plan may fix one itself:
            the KV cache that fits beside the update with the engine awake (`resolved_kv_cache_gb`).
        kv_cache_dtype: "auto" (the engine dtype) or "fp8" (vLLM's `kv_cache_dtype`: half the bytes of a bf16
            KV cache, so twice the tokens in the same room; the memory plan counts it). Costs some engine/policy
            mismatch (`rollout/mismatch_kl`): measure it before turning it on.
        max_num_seqs: sequences the engine decodes at once. "auto" (default): every completion of one rollout call
            (at most 256), told by `QeRLModule` before `setup` (`plan_rows`; `resolved_max_num_seqs`; see
            `qerl.rollout.vllm.num_seqs`); 256 when no module plans it.
        quantized_base: on CUDA, serve an NVFP4 base as compressed-tensors (False: always dense).
        lora_transfer: "memory" (tensors straight into the engine) or "folder" (peft files on tmpfs).
        importance_sampling_cap: truncated importance sampling: per-token weights min(p_policy/p_engine, cap)
            go into `Rollout.importance_weights` (None: off).
        measure_mismatch: score each rollout under the policy too and report `rollout/mismatch_kl`. "update":
            no scoring forward of its own when nothing needs it at rollout time (no importance sampling cap, no
            AQN noise on): the update's first forward, which runs the weights that generated, reports the same
            metrics (`mismatch_deferred` says so; `QeRLModule` passes it on in `TrainBatch.measure_mismatch`).
        enforce_eager: no CUDA graphs (slower decode, faster start).
        compile: torch.compile the engine's model (vLLM's default). False: no compile, full CUDA graphs for
            decode batches only - the engine starts much faster (most of its setup is compiling).
        cache_dir: vLLM's compile cache (`VLLM_CACHE_ROOT`); a later run of the same model starts faster
            (None: vLLM's default, ~/.cache/vllm).
        async_scheduling: vLLM schedules step n+1 on the CPU while the GPU runs step n. None: vLLM decides (0.22
            turns it on for every engine qerl builds on CUDA; the CPU build always runs it off); true/false force
            it (`resolved_async_scheduling` says what the engine runs; see `qerl.rollout.vllm.scheduling`).
        lora_configs: a folder of tuned configs for vLLM's Triton LoRA kernels (`benchmarks/lora_tune.py` writes one
            per card; `qerl.rollout.vllm.lora_configs` says how vLLM reads it). None: vLLM's defaults. Checked at
            `setup` for this GPU's files; the CPU build has no Triton LoRA kernels and ignores it (with a warning).
        engine_kwargs: further `vllm.LLM` keyword arguments. Unless they set `compilation_config`, CUDA graphs
            are captured only up to `max_num_seqs` rows (vLLM's default goes to twice that), and only with the
            adapter active (vLLM's default also captures each size without LoRA, which qerl never runs).
    """

    def __init__(self, gpu_memory_utilization: float | str = 0.3, max_model_len: int = 2048, tensor_parallel_size: int = 1,
                 enable_sleep_mode: bool | Literal["auto"] = False, dtype: str = "auto", max_lora_rank: int | None = None,
                 kv_cache_memory_gb: float | None = None, kv_cache_dtype: Literal["auto", "fp8"] = "auto",
                 max_num_seqs: int | Literal["auto"] = "auto", quantized_base: bool = True,
                 lora_transfer: str = "memory", importance_sampling_cap: float | None = None,
                 measure_mismatch: bool | Literal["update"] = True, enforce_eager: bool = False, seed: int = 0,
                 compile: bool = True, cache_dir: str | None = None, engine_kwargs: dict[str, Any] | None = None,
                 async_scheduling: bool | None = None, lora_configs: str | None = None) -> None:
        check_settings(gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       tensor_parallel_size=tensor_parallel_size, max_lora_rank=max_lora_rank,
                       lora_transfer=lora_transfer, importance_sampling_cap=importance_sampling_cap, dtype=dtype,
                       measure_mismatch=measure_mismatch, enable_sleep_mode=enable_sleep_mode,
                       async_scheduling=async_scheduling, engine_kwargs=engine_kwargs, max_num_seqs=max_num_seqs)
        self.gpu_memory_utilization, self.max_model_len = gpu_memory_utilization, max_model_len
        self.tensor_parallel_size, self.enable_sleep_mode = tensor_parallel_size, enable_sleep_mode
        self.dtype, self.max_lora_rank, self.kv_cache_memory_gb = dtype, max_lora_rank, kv_cache_memory_gb
        self.max_num_seqs, self.quantized_base, self.lora_transfer = max_num_seqs, quantized_base, lora_transfer
        self.importance_sampling_cap, self.measure_mismatch = importance_sampling_cap, measure_mismatch
        self.enforce_eager, self.seed, self.engine_kwargs = enforce_eager, seed, dict(engine_kwargs or {})
        self.cache_dir, self.async_scheduling = cache_dir, async_scheduling
        if lora_configs is not None:
            check_folder(lora_configs)  # the folder and some config in it; this GPU's files at setup
        self.lora_configs = None if lora_configs is None else os.path.abspath(lora_configs)
        self.resolved_async_scheduling: bool | None = None  # what the engine runs (setup)
        self.resolved_utilization: float | None = None  # the number the engine was started with (setup)
        self.resolved_sleep_mode: bool | None = None  # enable_sleep_mode "auto" as the memory plan decided it
        self.resolved_max_num_seqs: int | None = None  # max_num_seqs "auto" as `plan_rows` picked it
        self.resolved_kv_cache_gb: float | None = None  # the KV cache the plan cut to stay awake beside the update
        # every generation carries the adapter: graphs without LoRA (vLLM captures both by default) are never used
        graphs: dict[str, Any] = {"max_cudagraph_capture_size": None if max_num_seqs == "auto" else max_num_seqs,
                                  "cudagraph_specialize_lora": False}  # "auto": the picked size, filled in at setup
        if not compile:
            graphs.update(mode=0, cudagraph_mode="FULL_DECODE_ONLY")  # CompilationMode.NONE
        self.compile = compile
        self.engine_kwargs.setdefault("compilation_config", graphs)
        if kv_cache_dtype not in ("auto", "fp8"):
            raise ValueError(f"VLLM: kv_cache_dtype {kv_cache_dtype!r} is not one of 'auto', 'fp8'.")
        self.kv_cache_dtype = kv_cache_dtype
        if kv_cache_dtype != "auto":
            self.engine_kwargs.setdefault("kv_cache_dtype", kv_cache_dtype)
        # the preemption and recompute counters (`rollout/preemptions`, `rollout/recomputed_tokens`)
        self.engine_kwargs.setdefault("disable_log_stats", False)
        self._preemptions = 0
        self._recompute: recompute.RecomputeCounter | None = None
        self.setup_s: float | None = None
        self.served_as: str | None = None
        self.policy = self.tokenizer = self.llm = None
        self.model_dir: str | None = None
        self._lora_id, self._lora_path, self._pending, self._asleep, self._lora_dtype = 0, None, None, False, None
        self.last_timings: dict[str, float] = {}
        self.sync_timings: dict[str, float] = {}  # seconds of the last adapter snapshot and of its hand-over
        self.mismatch_deferred = False  # the last rollout left the mismatch metrics to the update's forward
        self._noise_args: tuple[float, int | None, bool] = (0.0, None, False)  # the engine's AQN block, if in one
        self._tp_group = None

    # ------------------------------------------------------------------ setup
    def setup(self, policy: nn.Module, tokenizer) -> None:
        super().setup(policy, tokenizer)
        self.lora_config = self._check_adapter(policy)
        engine.import_vllm()  # fail before the export if vLLM is missing
        lm = causal_lm(policy)
        if self.llm is not None:  # set up again (a new stage, or a rebuilt policy): the engine must hold its base
            if engine.base_checksum(lm) != self._base_checksum:
                raise ValueError("VLLM: setup with a policy whose base weights differ from the ones this engine was "
                                 "built from; use a new VLLM backend for another model.")
            self._pending = None
            return
        started = time.perf_counter()
        self._base_checksum = engine.base_checksum(lm)
        on_cuda = next(policy.parameters()).is_cuda
        dtype = self._engine_dtype(lm)
        packed, not_packed_why = self._packed_format(lm, on_cuda)
        self.resolved_utilization = self._utilization(policy)
        served = engine.unchanged_source_folder(lm) if packed else None  # a pre-quantized folder, as loaded
        if served is None:
            self.model_dir = served = engine.scratch_dir()
            weakref.finalize(self, shutil.rmtree, self.model_dir, True)  # tmpfs is RAM: never leave copies behind
            if packed:
                engine.export_quantized(lm, tokenizer, self.model_dir)
            else:
                warn_dense(engine.quantized_format(lm), dtype, on_cuda, self.quantized_base, not_packed_why)
                engine.export_dense(lm, tokenizer, self.model_dir, getattr(torch, dtype))
        self.served_as = (f"{packed} (compressed-tensors{', the loaded folder' if not self.model_dir else ''})"
                          if packed else dtype)
        if self.cache_dir:
            os.environ["VLLM_CACHE_ROOT"] = os.path.abspath(self.cache_dir)
        graphs = self.engine_kwargs["compilation_config"]
        if isinstance(graphs, dict) and graphs.get("max_cudagraph_capture_size", 0) is None:
            graphs["max_cudagraph_capture_size"] = self.num_seqs  # ours, for max_num_seqs "auto"
        kv_gb = self.kv_cache_gb
        if kv_gb is None and not on_cuda and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            kv_gb = 1.0
        placement = ranks.engine_placement(self.tensor_parallel_size, next(policy.parameters()).device)
        self._tp_group = ranks.make_group(self.tensor_parallel_size)
        lora_configs = self._lora_configs(on_cuda, next(policy.parameters()).device)
        float32_norms = wants_float32_norms(lm, dtype)
        try:
            with float32_rms_norms(float32_norms), handed_to_engine(lora_configs):
                self.llm = engine.build_llm(
                    served, dtype=dtype, max_lora_rank=self.max_lora_rank, max_loras=1,
                    gpu_memory_utilization=self.resolved_utilization, max_model_len=self.max_model_len,
                    tensor_parallel_size=self.tensor_parallel_size,
                    enable_sleep_mode=self.sleep_mode and on_cuda, seed=self.seed, kv_cache_memory_gb=kv_gb,
                    max_num_seqs=self.num_seqs, enforce_eager=self.enforce_eager or not on_cuda,
                    extra={**placement, **engine.cpu_batching(on_cuda, self.num_seqs, self.max_model_len),
                           **ir_norms.engine_kwargs(float32_norms, on_cuda, self.compile, self.tensor_parallel_size),
                           **self.engine_kwargs},
                    async_scheduling=self.async_scheduling)
        finally:  # the engine has read weights, config and tokenizer: the folder is no longer needed
            if self.model_dir:  # only our scratch copy, never the user's folder
                shutil.rmtree(self.model_dir, ignore_errors=True)
        self.resolved_async_scheduling = scheduling.resolved(self.llm)
        self._recompute = recompute.attach(self.llm)  # a new engine, a new counter
        self._lora_dtype = self.llm.collective_rpc(worker.lora_dtype)[0]  # the snapshot is cast to it
        self.sync_weights(policy)
        self._ready()
        engine.probe(self.llm, self.pad_id, self.lora_request())
        self.setup_s = time.perf_counter() - started

    def _lora_configs(self, on_cuda: bool, device) -> str | None:
        """The tuned LoRA kernel config folder the engine gets, after checking it has this GPU's files."""
        if self.lora_configs is None:
            return None
        if not on_cuda:
            warnings.warn("VLLM: `lora_configs` is ignored on the CPU build (its LoRA kernels are not Triton's).",
                          stacklevel=3)
            return None
        check_folder(self.lora_configs, torch.cuda.get_device_name(device))
        return self.lora_configs

    def _packed_format(self, lm: nn.Module, on_cuda: bool) -> tuple[str | None, str | None]:
        """(the 4-bit format the engine serves packed or None, why a packed base must go in dense or None)."""
        packed = engine.served_format(lm) if on_cuda and self.quantized_base else None
        problem = (engine.marlin_shape_problem(lm) or unshared_tensor_scales(lm)) if packed else None
        return (None if problem else packed), problem

    @property
    def num_seqs(self) -> int:
        """The engine's `max_num_seqs`: as set, or for "auto" what `plan_rows` picked (`AUTO_MAX_SEQS` unplanned)."""
        if self.max_num_seqs != "auto":
            return int(self.max_num_seqs)
        return self.resolved_max_num_seqs or AUTO_MAX_SEQS

    @property
    def kv_cache_gb(self) -> float | None:
        """The engine's fixed KV cache (GiB): `kv_cache_memory_gb`, else what the memory plan cut it to so the engine
        stays awake beside training under the rollout (`resolved_kv_cache_gb`), else None (vLLM sizes it)."""
        return self.kv_cache_memory_gb if self.kv_cache_memory_gb is not None else self.resolved_kv_cache_gb

    def plan_rows(self, rows: int) -> str | None:
        """`max_num_seqs: auto` picked for `rows` completions a rollout call (`qerl.rollout.vllm.num_seqs`), with
        the line that says so; None when max_num_seqs is a number."""
        if self.max_num_seqs != "auto" or self.llm is not None:  # a number, or an engine already built with its own
            return None
        world_size = world()[0]
        self.resolved_max_num_seqs = auto_num_seqs(rows, self.tensor_parallel_size, world_size)
        return describe_pick(self.resolved_max_num_seqs, rows, self.tensor_parallel_size, world_size)

    def engine_estimate(self, policy: nn.Module, device) -> EngineEstimate:
        """The engine's memory on one GPU of `device`'s kind for `policy` (`qerl.memory.engine`): its weights as
        they would be served, the LoRA slot, max_num_seqs x max_model_len of KV cache (or `kv_cache_memory_gb`)
        and the profiling / graph allowance. Built before the engine, from the policy's HF config."""
        return memory.engine_estimate(self, policy, device)

    def _utilization(self, policy: nn.Module) -> float:
        """`gpu_memory_utilization` as a number (`qerl.rollout.vllm.memory.resolve_utilization`)."""
        return memory.resolve_utilization(self, policy)

    def _check_adapter(self, policy: nn.Module) -> dict:
        """The policy's peft LoRA config as a dict (`qerl.rollout.vllm.checks.check_adapter`); sets max_lora_rank."""
        config, self.max_lora_rank = check_adapter(policy, self.max_lora_rank)
        return config

    def _engine_dtype(self, lm: nn.Module) -> str:
        if self.dtype != "auto":
            return self.dtype
        dense = next((p.dtype for p in lm.parameters() if p.is_floating_point()), torch.bfloat16)
        return "float32" if dense == torch.float32 else "bfloat16"

    # ------------------------------------------------------------------ sync
    def sync_weights(self, policy: nn.Module) -> None:
        """Snapshot the trained LoRA tensors (and other trainable tensors, e.g. norms); they reach the engine
        before its next generation (after it wakes, in sleep mode)."""
        from peft import get_peft_model_state_dict

        started = time.perf_counter()
        lora = to_host(get_peft_model_state_dict(policy), self._lora_dtype)  # one pinned copy, the engine's dtype
        dense = to_host({engine_name(n): p for n, p in policy.named_parameters() if p.requires_grad and "lora_" not in n})
        self._pending = (lora, dense)
        self.sync_timings = {"snapshot_s": time.perf_counter() - started}
        if not self._asleep:
            self._apply_pending()

    def _apply_pending(self) -> None:
        if self._pending is None or self.llm is None:
            return
        lora, dense = self._pending
        self._pending, started = None, time.perf_counter()
        self._lora_id += 1
        if self.lora_transfer == "memory":
            self.llm.collective_rpc(worker.load_lora_tensors, args=(self._lora_id, self.lora_config, lora))
        else:
            self._write_adapter_folder()
        if dense:
            self.llm.collective_rpc(worker.load_named_weights, args=(dense,))
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        self.sync_timings["apply_s"] = time.perf_counter() - started

    def _write_adapter_folder(self) -> None:
        old, self._lora_path = self._lora_path, scratch_dir("qerl-lora-")
        weakref.finalize(self, shutil.rmtree, self._lora_path, True)
        self.policy.save_pretrained(self._lora_path)
        if old:
            shutil.rmtree(old, ignore_errors=True)

    def lora_request(self):
        """The vLLM LoRARequest of the adapter synced last (a new int id per sync)."""
        from vllm.lora.request import LoRARequest

        path = self._lora_path if self.lora_transfer == "folder" else f"qerl-in-memory-{self._lora_id}"
        return LoRARequest(f"qerl-{self._lora_id}", self._lora_id, path)

    def _ready(self) -> None:
        if self.llm is None:
            raise RuntimeError("VLLM.generate called before setup(policy, tokenizer).")
        if self._asleep:
            self._wake()
        self._apply_pending()

    # ------------------------------------------------------------------ generate
    def sampling_params(self, sampling: SamplingConfig, prompt_index: int):
        """The vLLM SamplingParams of one prompt (seeds never overlap between prompts)."""
        from vllm import SamplingParams

        seed = None if sampling.seed is None else int(sampling.seed) + prompt_index * sampling.n
        return SamplingParams(n=sampling.n, temperature=float(sampling.temperature), top_p=float(sampling.top_p),
                              max_tokens=int(sampling.max_new_tokens), stop=list(sampling.stop) or None,
                              include_stop_str_in_output=True, seed=seed, logprobs=0)

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> Rollout:
        self._ready()
        check_lengths(prompt_ids, sampling.max_new_tokens, self.max_model_len)
        start = time.perf_counter()
        outputs = self.request_outputs(prompt_ids, sampling)
        device = next(self.policy.parameters()).device
        rollout = rollout_from_outputs(outputs, prompt_ids, sampling.n, self.pad_id, self.tokenizer, device)
        check_finite_logprobs(rollout, self.served_as)
        generated = time.perf_counter()
        self.last_metrics = self._preemption_metrics()
        self.mismatch_deferred = self.update_measures_mismatch()
        if (self.measure_mismatch and not self.mismatch_deferred) or self.importance_sampling_cap is not None:
            found, weights = mismatch(self.policy, rollout, sampling.temperature, self.importance_sampling_cap,
                                      layout=self.scoring_layout)
            self.last_metrics.update(found)
            if weights is not None:
                rollout.importance_weights = weights
        # seconds of the engine and of the policy's scoring forward (the outputs and metrics are on the CPU: synced)
        self.last_timings = {"engine_s": generated - start, "scoring_s": time.perf_counter() - generated}
        return rollout

    def request_outputs(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> list:
        """vLLM's RequestOutputs, one per prompt with `sampling.n` completions (with a tensor-parallel group: the
        group's prompts generated together, this rank's kept)."""
        return ranks.generate_outputs(self, prompt_ids, sampling)

    def update_measures_mismatch(self) -> bool:
        """Whether the update's forward can report the mismatch instead of a scoring forward of the rollout's own:
        `measure_mismatch: update`, no importance sampling cap, and no AQN noise on (it runs the weights that
        generated)."""
        return (self.measure_mismatch == "update" and self.importance_sampling_cap is None
                and self._noise_args[0] == 0.0)

    def _preemption_metrics(self) -> dict[str, float]:
        """`rollout/preemptions`: sequences vLLM preempted (KV cache full: recomputed later) in the last generate;
        `rollout/recomputed_tokens`: the tokens it computed again for them (`qerl.rollout.vllm.recompute`)."""
        total = engine.preemptions(self.llm)
        if total is None:
            return {}
        count, self._preemptions = total - self._preemptions, total
        found = {"rollout/preemptions": float(count)}
        if self._recompute is not None:
            found["rollout/recomputed_tokens"] = float(self._recompute.take())
        return found

    def score(self, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
        """The engine's log-probs (float32, unscaled) of `completion_ids` following `prompt_ids`, current adapter."""
        from vllm import SamplingParams

        self._ready()
        ids = list(map(int, prompt_ids)) + list(map(int, completion_ids))
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        out = self.llm.generate([{"prompt_token_ids": ids}], params, lora_request=self.lora_request(),
                                use_tqdm=False)[0]
        found = out.prompt_logprobs[len(prompt_ids):]
        return torch.tensor([d[t].logprob for d, t in zip(found, completion_ids)], dtype=torch.float32)

    def engine_linear_methods(self) -> dict[str, int]:
        """How the engine serves the base: {vLLM scheme / quant-method class: number of linear layers}."""
        self._ready()
        return self.llm.collective_rpc(worker.linear_methods)[0]

    def close(self) -> None:
        """Drop the engine and its scratch folders."""
        self.llm = None
        for path in (self.model_dir, self._lora_path):
            if path:
                shutil.rmtree(path, ignore_errors=True)
