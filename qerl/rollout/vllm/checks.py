"""What the `VLLM` backend checks and says before its engine starts: settings vLLM would refuse, the adapter it
can take, and why a 4-bit base would be served dense (`qerl.rollout.vllm.backend`)."""
from __future__ import annotations

import warnings

from torch import nn

from qerl.rollout.vllm.engine import SERVED_FORMATS

#: max_lora_rank values vLLM accepts
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
KEY = "rollout.init_args"


def check_settings(*, gpu_memory_utilization, max_model_len, tensor_parallel_size, max_lora_rank, lora_transfer,
                   importance_sampling_cap, dtype, measure_mismatch=True,
                   enable_sleep_mode=False, async_scheduling=None, engine_kwargs=None, max_num_seqs="auto") -> None:
    """A `ValueError` naming the `rollout.init_args` key and what it must be, for a setting vLLM would refuse."""
    def need(ok: bool, key: str, value, what: str) -> None:
        if not ok:
            raise ValueError(f"VLLM: `{KEY}.{key}`={value!r} {what}.")

    need(gpu_memory_utilization == "auto" or (isinstance(gpu_memory_utilization, (int, float))
                                               and not isinstance(gpu_memory_utilization, bool)
                                               and 0 < gpu_memory_utilization <= 1),
         "gpu_memory_utilization", gpu_memory_utilization, 'must be "auto" or a number in (0, 1]')
    need(isinstance(max_model_len, int) and max_model_len > 1, "max_model_len", max_model_len, "must be an int > 1")
    need(isinstance(tensor_parallel_size, int) and tensor_parallel_size >= 1, "tensor_parallel_size",
         tensor_parallel_size, "must be an int >= 1")
    need(max_lora_rank is None or max_lora_rank in VLLM_LORA_RANKS, "max_lora_rank", max_lora_rank,
         f"is not one of vLLM's {VLLM_LORA_RANKS}")
    need(lora_transfer in ("memory", "folder"), "lora_transfer", lora_transfer, 'must be "memory" or "folder"')
    need(importance_sampling_cap is None or importance_sampling_cap >= 1, "importance_sampling_cap",
         importance_sampling_cap, "must be >= 1 (or null to switch truncated importance sampling off)")
    need(dtype in ("auto", "bfloat16", "float16", "float32"), "dtype", dtype,
         'must be "auto", "bfloat16", "float16" or "float32"')
    need(measure_mismatch in (True, False, "update"), "measure_mismatch", measure_mismatch,
         'must be true, false or "update"')
    need(isinstance(enable_sleep_mode, bool) or enable_sleep_mode == "auto", "enable_sleep_mode", enable_sleep_mode,
         'must be true, false or "auto" (the start-up memory plan decides)')
    need(max_num_seqs == "auto" or (isinstance(max_num_seqs, int) and not isinstance(max_num_seqs, bool)
                                    and max_num_seqs >= 1),
         "max_num_seqs", max_num_seqs, 'must be "auto" (every completion of a rollout call) or an int >= 1')
    need(async_scheduling is None or isinstance(async_scheduling, bool), "async_scheduling", async_scheduling,
         "must be true, false or null (vLLM decides)")
    need(async_scheduling is None or "async_scheduling" not in (engine_kwargs or {}), "async_scheduling",
         async_scheduling, "is set, and `engine_kwargs.async_scheduling` too; keep one of them")


def check_adapter(policy: nn.Module, max_lora_rank: int | None) -> tuple[dict, int]:
    """(the policy's peft LoRA config as a dict, the engine's max_lora_rank: as given, or the smallest vLLM value
    that holds the adapter); a clear error, before any engine starts, for what vLLM cannot take."""
    configs = getattr(policy, "peft_config", None) if hasattr(policy, "get_base_model") else None
    if not configs:
        raise ValueError("VLLM: the policy has no LoRA adapter (`model.init_args.lora` is null). The vLLM "
                         "engine keeps the frozen base and receives only LoRA (and norm) updates; add LoRA "
                         "settings or use `rollout: HF`.")
    config = next(iter(configs.values())).to_dict()
    rank = max([int(config["r"]), *map(int, (config.get("rank_pattern") or {}).values())])
    if max_lora_rank is None:
        fits = [r for r in VLLM_LORA_RANKS if r >= rank]
        if not fits:
            raise ValueError(f"VLLM: LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}.")
        max_lora_rank = fits[0]
    elif rank > max_lora_rank:
        raise ValueError(f"VLLM: the LoRA rank is {rank} (`model.init_args.lora.rank`) but `{KEY}.max_lora_rank` "
                         f"is {max_lora_rank}; raise max_lora_rank to >= {rank} (one of {VLLM_LORA_RANKS}) "
                         "or lower the rank.")
    if config.get("bias", "none") != "none":
        raise ValueError("VLLM: LoRA bias is not supported by vLLM; use bias='none'.")
    config["target_modules"] = sorted(config.get("target_modules") or [])
    return config, max_lora_rank


def warn_dense(fmt: str | None, dtype: str, on_cuda: bool, quantized_base: bool,
               not_packed_why: str | None = None) -> None:
    """Say when a 4-bit policy base is served dense (the engine then reads 16-bit weights), and why
    (`not_packed_why`: what `VLLM._packed_format` found, e.g. a Marlin shape or unshared fused tensor scales)."""
    if fmt is None:
        return
    if not_packed_why:
        why = not_packed_why
    elif not on_cuda:
        why = "the CPU build of vLLM has no FP4 weight kernels"
    elif not quantized_base:
        why = f"`{KEY}.quantized_base` is false"
    else:
        why = f"vLLM serves only {'/'.join(f.upper() for f in SERVED_FORMATS)} bases packed"
    warnings.warn(f"VLLM: the {fmt.upper()} policy base is served dense ({dtype}) by the engine: {why}. "
                  "Generation matches the policy's dequantized weights, without the 4-bit speed-up.",
                  stacklevel=4)
