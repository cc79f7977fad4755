"""Data-parallel runs of benchmarks/step.py under torchrun: W processes, one GPU each, the same global batch.

    torchrun --standalone --nproc_per_node 2 benchmarks/step.py --rows 7b:nvfp4:16:512

Rank 0 first runs every row alone on its GPU with the whole batch (the one-GPU baseline, in the same job and
on the same machine) while the other ranks wait in the process-group rendezvous; then all W ranks join and
run the row again, each with batch / W completions of its own prompts. The data-parallel step is the one
`QeRLModule` takes under `strategy: ddp`: each rank rolls out and back-propagates its share with the step's
global loss normalizers, and the LoRA gradients are summed in one all-reduce (`qerl.training.distributed`). Step time is
the slowest rank's; tokens/s is the global batch's completion tokens over it.
"""
from __future__ import annotations

import datetime
import os

import torch


def launched() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment; (1, 0, 0) for a plain `python` run."""
    return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")))


def bind_device(local_rank: int) -> None:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)


def join(world_size: int) -> None:
    """Join the process group (NCCL on GPUs, gloo on CPUs); waits for rank 0's baseline rows (long timeout)."""
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=2))


def leave() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def own_prompts(prompt_ids: list, world_size: int, rank: int) -> list:
    """This rank's contiguous share of the global prompts (every rank the same number)."""
    if len(prompt_ids) % world_size:
        raise SystemExit(f"{len(prompt_ids)} prompts per step cannot be split over {world_size} ranks: make the row's "
                         "batch a multiple of group x ranks (e.g. 16 with group 8 on 2 GPUs).")
    share = len(prompt_ids) // world_size
    return prompt_ids[rank * share:(rank + 1) * share]


def slowest(phases: dict[str, float]) -> dict[str, float]:
    """Each phase's time on the slowest rank (the phases of one process when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return phases
    keys = sorted(phases)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    values = torch.tensor([phases[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    return dict(zip(keys, values.tolist()))


def agree(flag: bool) -> bool:
    """Rank 0's `flag` on every rank (so all ranks run or skip a row together)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    box = [flag]
    torch.distributed.broadcast_object_list(box, src=0)
    return bool(box[0])


def compare_to_baseline(rows: list[dict]) -> None:
    """Give the newest row, when it ran on several GPUs, its throughput over the same spec's one-GPU row."""
    last = rows[-1]
    if last.get("gpus", 1) == 1 or last.get("status") != "ok":
        return
    same = ("model", "format", "batch", "new")
    for row in rows[:-1]:
        if row.get("gpus") == 1 and row.get("status") == "ok" and all(row[k] == last[k] for k in same):
            last["speedup_vs_1gpu"] = round(last["tokens_per_s"] / row["tokens_per_s"], 3)
