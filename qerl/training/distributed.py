"""Data-parallel ranks (`trainer.strategy: ddp`): global counts, one gradient all-reduce per step, global metrics.

Every rank rolls out its own prompts with its own engine, scores its own groups (a GRPO group never leaves its
rank, so advantages stay local) and backpropagates its share of the loss. What the ranks must agree on goes
through the default process group here, with the same calls on every rank in the same order:

- the loss normalizers (completions and completion tokens of the whole step, summed over ranks), so each
  rank's loss is its share of the one-process loss;
- the gradients: summed once per optimizer step (one flat all-reduce), together with a flag that is set when
  some rank hit a non-finite loss, so every rank skips the same steps;
- the metrics: the scored completions of all ranks are gathered before rewards, accuracy and lengths are
  averaged, and the update's metrics are combined as sums, minima and maxima.

DDP's own bucketed all-reduce runs inside every `backward` and assumes every rank runs the same number of
them; an RL step does not (its micro-batch count follows the rollout, a non-finite loss ends it early), so
the module switches it off (`take_over_gradient_sync`) and sums the gradients itself. Without a process
group (one process) every function here is the identity. The rank itself and the collectives other floors
share (`world`, `gather_objects`, `sum_over_ranks`, `on_every_rank`) are in `qerl.parallel`.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch

from qerl.parallel import gather_objects, is_distributed, world


def global_draw(draw: int) -> int:
    """Index of a rank's `draw`-th rollout of a step among all ranks' (rank r of W: draws r, W + r, ...).

    Rollout seeds follow it, so W ranks sample what one process with W times the batches per step samples.
    """
    size, rank = world()
    return int(draw) * size + rank


def broadcast_only_trainable(module: torch.nn.Module) -> None:
    """Let a DDP wrapper broadcast only the trainable weights from rank 0 when it is built.

    Every rank loads the same frozen base itself; broadcasting it would move gigabytes and fails on gloo for
    4-bit formats' float8 scales. Buffers and frozen parameters are listed in the attribute DDP reads.
    """
    frozen = [name for name, p in module.named_parameters() if not p.requires_grad]
    module._ddp_params_and_buffers_to_ignore = frozen + [name for name, _ in module.named_buffers()]


def take_over_gradient_sync(trainer: Any) -> None:
    """Stop the DDP wrapper from all-reducing inside each backward; `sum_gradients` does it once per step."""
    wrapper = getattr(getattr(trainer, "strategy", None), "model", None)
    if isinstance(wrapper, torch.nn.parallel.DistributedDataParallel):
        wrapper.require_backward_grad_sync = False


def global_totals(num_sequences: int, num_tokens: float, device: torch.device) -> tuple[int, float] | None:
    """(completions, completion tokens) of the step summed over ranks; None in one process."""
    if not is_distributed():
        return None
    counts = torch.tensor([float(num_sequences), float(num_tokens)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(counts)
    return int(counts[0].item()), float(counts[1].item())


def sum_gradients(parameters: list[torch.nn.Parameter], finite: bool) -> bool:
    """Sum the gradients of `parameters` over ranks (in float32, one all-reduce); True if every rank was finite.

    A parameter without a gradient counts as zeros (and gets the summed gradient), so every rank sends the
    same layout. In one process nothing is sent and `finite` comes back.
    """
    if not is_distributed():
        return finite
    device = parameters[0].device if parameters else torch.device("cpu")
    flat = [p.grad.detach().reshape(-1).float() if p.grad is not None else torch.zeros(p.numel(), device=device)
            for p in parameters]
    flag = torch.tensor([0.0 if finite else 1.0], device=device)
    packed = torch.cat([*flat, flag])
    torch.distributed.all_reduce(packed)
    offset = 0
    for p in parameters:
        summed = packed[offset:offset + p.numel()].view_as(p)
        if p.grad is None:
            p.grad = summed.to(p.dtype).clone()
        else:
            p.grad.copy_(summed)
        offset += p.numel()
    return bool(packed[-1].item() == 0.0)


def combine_update_metrics(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    """The update's metrics over all ranks: `*_min`/`*_max` as extremes, the rest (shares of the global
    loss, token-weighted means over the global token count) summed. A key some rank lacks (a value it
    skipped as non-finite) counts there as 0 in a sum and is left out of an extreme."""
    if not is_distributed():
        return metrics
    keys = sorted({k for part in gather_objects(sorted(metrics)) for k in part})
    empty = {"_min": math.inf, "_max": -math.inf, "": 0.0}
    out = {}
    for suffix, op in (("_min", torch.distributed.ReduceOp.MIN), ("_max", torch.distributed.ReduceOp.MAX),
                       ("", torch.distributed.ReduceOp.SUM)):
        chosen = [k for k in keys if k.endswith(suffix) and k not in out] if suffix else \
            [k for k in keys if k not in out]
        if not chosen:
            continue
        values = torch.tensor([float(metrics.get(k, empty[suffix])) for k in chosen], dtype=torch.float64,
                              device=device)
        torch.distributed.all_reduce(values, op=op)
        out.update(zip(chosen, values.tolist()))
    return {k: out[k] for k in keys}


def gather_scored(scored: Any, rollout_seconds: float) -> tuple[Any, float]:
    """All ranks' scored completions as one object with `scores`, `rewards`, `correct` and `rollout.lengths` /
    `rollout.truncated` (what the step metrics read), and the slowest rank's rollout seconds."""
    if not is_distributed():
        return scored, rollout_seconds
    mine = {"scores": {k: v.detach().cpu() for k, v in scored.scores.items()},
            "rewards": scored.rewards.detach().cpu(), "correct": scored.correct.detach().cpu(),
            "lengths": scored.rollout.lengths.detach().cpu(), "truncated": scored.rollout.truncated.detach().cpu(),
            "seconds": float(rollout_seconds)}
    parts = gather_objects(mine)
    joined = SimpleNamespace(
        scores={k: torch.cat([p["scores"][k] for p in parts]) for k in mine["scores"]},
        rewards=torch.cat([p["rewards"] for p in parts]), correct=torch.cat([p["correct"] for p in parts]),
        rollout=SimpleNamespace(lengths=torch.cat([p["lengths"] for p in parts]),
                                truncated=torch.cat([p["truncated"] for p in parts])))
    return joined, max(p["seconds"] for p in parts)


def own_rng(resume: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's `qerl` entry with `rng` set to this rank's saved generator states (when the checkpoint
    holds one per rank and the run has as many ranks); unchanged otherwise (rank 0's states for everyone)."""
    by_rank = resume.get("rng_by_rank")
    size, rank = world()
    if by_rank and len(by_rank) == size:
        return {**resume, "rng": by_rank[rank]}
    return resume
