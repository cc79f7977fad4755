"""The default process group: (size, rank), and collectives on small values that every rank calls in the same order."""
from __future__ import annotations

from typing import Any

import torch


def world() -> tuple[int, int]:
    """(number of processes, this process's rank); (1, 0) without an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def is_distributed() -> bool:
    return world()[0] > 1


def on_every_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` holds on every rank (a step is skipped everywhere when one rank must skip it)."""
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item() == 1.0)


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums of small counters over ranks (the values themselves in one process)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (`[obj]` in one process)."""
    if not is_distributed():
        return [obj]
    parts: list[Any] = [None] * world()[0]
    torch.distributed.all_gather_object(parts, obj)
    return parts
