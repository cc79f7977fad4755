"""The training half of a step: log-probs and the algorithm's loss over micro-batches, gradients accumulated."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from qerl.algorithms.base import Algorithm
from qerl.models.logprobs import PaddedRows
from qerl.models.mismatch import mismatch_sums
from qerl.types import Rollout


@dataclass
class TrainBatch:
    """What one optimizer step trains on: the rollout, advantages (R,), and stored log-probs (R, T) if any.

    `measure_mismatch`: the engine left its mismatch metrics to this update (`VLLM(measure_mismatch="update")`);
    they are measured on the policy's log-probs of the weights that generated (`old`), at no extra forward.
    """

    rollout: Rollout
    advantages: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    measure_mismatch: bool = False


@dataclass
class UpdateResult:
    """Token-weighted metrics of one pass over the batch; `finite` is False when a loss was NaN/Inf."""

    metrics: dict[str, float]
    finite: bool


def accumulate_gradients(
    model: nn.Module,
    algorithm: Algorithm,
    batch: TrainBatch,
    micro_batch_size: int,
    temperature: float,
    backward: Callable[[torch.Tensor], None],
    forward_context: Callable[[], contextlib.AbstractContextManager] | None = None,
    totals: tuple[int, float] | None = None,
    layout: PaddedRows | None = None,
) -> UpdateResult:
    """Run every micro-batch forward and backward; the micro-batch losses sum to the full-batch loss.

    `totals` (completions, completion tokens) normalizes the loss when this batch is one rank's share of a
    larger step (`qerl.training.distributed.global_totals`); the losses and token-weighted metrics are then this
    rank's shares, summed over ranks later. Default: this batch's own counts.
    Stops at the first non-finite loss (before its backward) and reports `finite=False`.
    `layout`: how rows become micro-batches (`PaddedRows`, the default, or `qerl.models.packed.PackedGroups`).
    """
    layout = layout if layout is not None else PaddedRows()
    rollout = batch.rollout
    num_sequences = rollout.num_rows
    num_tokens = float(rollout.completion_mask.sum().clamp(min=1))
    if totals is not None:
        num_sequences, num_tokens = int(totals[0]), max(1.0, float(totals[1]))
    sums: dict[str, float] = {"loss": 0.0, "entropy": 0.0}
    weighted: dict[str, float] = {}
    extremes: dict[str, float] = {}
    for rows in layout.batches(rollout, micro_batch_size):
        with forward_context() if forward_context is not None else contextlib.nullcontext():
            lp = layout.logprobs(model, rollout, rows, temperature, with_entropy=True)
            width = lp.logprobs.shape[1]
            c_mask = rollout.completion_mask[rows, :width]
            if rollout.importance_weights is not None:  # truncated IS: same values, weighted grads
                weight = rollout.importance_weights[rows, :width].to(lp.logprobs.dtype)
                lp.logprobs = lp.logprobs.detach() + weight * (lp.logprobs - lp.logprobs.detach())
            old = batch.old_logprobs[rows, :width] if batch.old_logprobs is not None else lp.logprobs.detach()
            ref = batch.ref_logprobs[rows, :width] if batch.ref_logprobs is not None else None
            if batch.measure_mismatch:
                for key, value in mismatch_sums(old, rollout.logprobs[rows, :width], c_mask).items():
                    weighted[key] = weighted.get(key, 0.0) + value
            out = algorithm.loss(lp.logprobs, old, batch.advantages[rows], c_mask, ref,
                                 num_sequences=num_sequences, num_tokens=num_tokens)
            if not torch.isfinite(out.loss.detach()):
                return UpdateResult(metrics={"loss": float("nan")}, finite=False)
            backward(out.loss)
        tokens = float(c_mask.sum())
        sums["loss"] += float(out.loss.detach())
        sums["entropy"] += float((lp.entropy * c_mask).sum()) if lp.entropy is not None else 0.0
        for key, value in out.metrics.items():
            if key in ("loss", "tokens") or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if key.endswith(("_min", "_max")):  # extremes combine as extremes, means by token weight
                pick = min if key.endswith("_min") else max
                extremes[key] = pick(extremes.get(key, value), value)
            else:
                weighted[key] = weighted.get(key, 0.0) + value * tokens
    metrics = {"loss": sums["loss"], "entropy": sums["entropy"] / num_tokens, **extremes}
    metrics.update({k: v / num_tokens for k, v in weighted.items()})
    return UpdateResult(metrics=metrics, finite=True)


def clip_gradients(parameters: list[nn.Parameter], max_norm: float) -> float:
    """Clip the global L2 norm of the gradients to `max_norm` (0: no clipping); return the norm before clipping."""
    grads = [p for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    limit = max_norm if max_norm and max_norm > 0 else float("inf")
    return float(torch.nn.utils.clip_grad_norm_(grads, limit))
