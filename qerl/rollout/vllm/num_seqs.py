"""`max_num_seqs: auto`: how many sequences the colocated engine decodes at once, picked from the step's shape.

"auto" lets the engine take every completion of one rollout call at once (this rank's prompts x group; under data
parallelism a tensor-parallel group of k ranks generates its k ranks' completions together), at most
`AUTO_MAX_SEQS`. vLLM admits a waiting sequence only when the KV cache has free blocks for it and preempts (frees
and later recomputes) the newest one when the running ones outgrow the cache, so a limit above what the cache holds
costs no memory: the engine runs as many sequences as the cache holds at each moment, and more as short ones finish.
A lower limit only caps the decode batch. Measured on an H100 80GB (2026-12-07, 32B NVFP4, 128 completions of the
DAPO length model up to 8,192 tokens, `benchmarks/results/step-NVIDIA-H100-80GB-HBM3-2026-12-07-dapo-shape.json`):
with `max_num_seqs` 128 the 111,776-token KV cache ran ~40 sequences at once while long ones were running, with 74
preemptions in the step (`rollout/preemptions`). The memory plan sizes the KV cache it asks for by this number
(`qerl.memory.engine`), and `gpu_memory_utilization: auto` settles for what the card has.
"""
from __future__ import annotations

#: the most sequences "auto" gives the engine (vLLM's own `max_num_seqs` default on a GPU); CUDA graphs are captured
#: up to this size, and the sampler's logits buffers grow with it
AUTO_MAX_SEQS = 256


def engine_rows(rows: int, tensor_parallel_size: int = 1, world_size: int = 1) -> int:
    """Completions one engine generates per rollout call: this rank's `rows`, times `tensor_parallel_size` when the
    ranks of a group share one engine (data parallelism, `world_size` > 1)."""
    return int(rows) * (int(tensor_parallel_size) if world_size > 1 else 1)


def auto_num_seqs(rows: int, tensor_parallel_size: int = 1, world_size: int = 1) -> int:
    """`max_num_seqs` for "auto": the engine's rows (`engine_rows`), capped at `AUTO_MAX_SEQS`."""
    return max(1, min(AUTO_MAX_SEQS, engine_rows(rows, tensor_parallel_size, world_size)))


def describe_pick(seqs: int, rows: int, tensor_parallel_size: int, world_size: int) -> str:
    """The start-up line for the pick."""
    asked = engine_rows(rows, tensor_parallel_size, world_size)
    whose = (f"{rows} completions a rank x {tensor_parallel_size} ranks sharing the engine" if asked != rows
             else f"{rows} completions a rollout call")
    capped = f", capped at {AUTO_MAX_SEQS}" if asked > seqs else ""
    return (f"qerl: max_num_seqs auto -> {seqs} ({whose}{capped}; vLLM runs as many at once as its KV cache holds "
            "and counts what it must preempt in rollout/preemptions)")
