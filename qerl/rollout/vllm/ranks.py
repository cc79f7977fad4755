"""`VLLM` under data parallelism: one colocated engine per rank, or one tensor-parallel engine per group of ranks.

In one process `tensor_parallel_size: k` lets vLLM start its own k workers. Under `trainer.strategy: ddp` with W
ranks (one GPU each) the engines run inside the training processes instead, on vLLM's `external_launcher`
executor (the torchrun-style mode: every process holds one engine worker, the process group is the trainer's):

- `tensor_parallel_size: 1`: every rank has its own engine on its own GPU and generates its own prompts;
- `tensor_parallel_size: k` (k divides W): ranks [0, k), [k, 2k), ... each hold one engine sharded over their
  k GPUs. The ranks of a group gather their prompts, all of them generate the whole set (vLLM needs the same
  calls on every shard), and each keeps the completions of its own prompts, sampled with its own seeds - the
  same completions each rank would have drawn on an engine of its own.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from qerl.parallel import world

_KEY = "rollout.init_args"


def tensor_parallel_groups(world_size: int, tensor_parallel_size: int) -> list[list[int]]:
    """Ranks grouped into tensor-parallel engines: consecutive runs of `tensor_parallel_size` ranks."""
    if world_size % tensor_parallel_size:
        raise ValueError(f"VLLM: `{_KEY}.tensor_parallel_size`={tensor_parallel_size} must divide the number of "
                         f"training processes ({world_size}, `trainer.devices` x nodes): every group of that many "
                         "ranks holds one engine. Use 1 (an engine per GPU) or a divisor.")
    return [list(range(start, start + tensor_parallel_size)) for start in range(0, world_size, tensor_parallel_size)]


def engine_placement(tensor_parallel_size: int, device: torch.device) -> dict[str, Any]:
    """Extra `vllm.LLM` arguments for an engine built in this process ({} outside data parallelism).

    Under DDP: the `external_launcher` executor, and the torchrun variables it reads (`RANK`, `LOCAL_RANK`,
    `WORLD_SIZE`; Lightning's first process has none of them) set from the process group and `device`.
    """
    size, rank = world()
    if size == 1:
        return {}
    tensor_parallel_groups(size, tensor_parallel_size)  # checks the division
    if tensor_parallel_size > 1 and device.type != "cuda":
        raise ValueError(f"VLLM: `{_KEY}.tensor_parallel_size`={tensor_parallel_size} needs CUDA devices.")
    local = device.index if device.type == "cuda" and device.index is not None else int(os.environ.get(
        "LOCAL_RANK", rank))
    os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"] = str(rank), str(size), str(local)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # external_launcher runs the engine in this process
    return {"distributed_executor_backend": "external_launcher"}


def make_group(tensor_parallel_size: int):
    """This rank's tensor-parallel process group (None in one process or with one GPU per engine).

    Every rank must call this (creating groups is collective)."""
    size, _ = world()
    if size == 1 or tensor_parallel_size == 1:
        return None
    group, _ = torch.distributed.new_subgroups_by_enumeration(tensor_parallel_groups(size, tensor_parallel_size))
    return group


def generate_outputs(backend, prompt_ids: list[list[int]], sampling) -> list:
    """vLLM RequestOutputs of this rank's prompts; within a tensor-parallel group, every rank generates the
    group's prompts (each rank's with that rank's sampling seeds) and keeps its own."""
    group = getattr(backend, "_tp_group", None)
    if group is None:
        params = [backend.sampling_params(sampling, i) for i in range(len(prompt_ids))]
        return _run(backend, prompt_ids, params)
    parts: list[Any] = [None] * torch.distributed.get_world_size(group)
    torch.distributed.all_gather_object(parts, (prompt_ids, sampling), group=group)
    prompts, params, own = [], [], None
    for member, (ids, member_sampling) in enumerate(parts):
        if member == torch.distributed.get_rank(group):
            own = (len(prompts), len(prompts) + len(ids))
        params.extend(backend.sampling_params(member_sampling, i) for i in range(len(ids)))
        prompts.extend(ids)
    outputs = _run(backend, prompts, params)
    return outputs[own[0]:own[1]]


def _run(backend, prompt_ids: list[list[int]], params: list) -> list:
    prompts = [{"prompt_token_ids": list(map(int, p))} for p in prompt_ids]
    return backend.llm.generate(prompts, params, lora_request=backend.lora_request(), use_tqdm=False)
