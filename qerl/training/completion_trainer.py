"""`CompletionTrainer`: training under the rollout completion by completion (`train_during_rollout_unit:
completion`): the completions of a group that is still generating train as they end, before the group's
advantages are known.

Why it is exact: with one update per rollout the surrogate's gradient is sum_i A_i g_i (`qerl.training.overlap`).
For the group-relative algorithms (GRPO, Dr. GRPO, DAPO, RLOO) a completion's advantage is a function of its own
shaped reward, given its group's rewards, so sum_i A_i g_i = sum_v A(v) G_v, where G_v sums the g_i of the
completions whose shaped reward is v. A completion that ends early is scored at once and back-propagated with
advantage 1 into the buffer of its reward value (float32, one tensor per trainable parameter); when its group's
last completion ends, the group is scored whole, each buffer goes into the gradient times its value's advantage,
and the completions not trained yet train with their own advantages. The loss and the policy loss reported are
linear in the advantages too and are scaled the same way. Memory: one adapter-sized float32 buffer per open group
and reward value - why the engine hands completions over early only while few groups are still generating
(`OPEN_GROUPS`) and at most `MAX_BUFFERS` are held (verifiable rewards take a few values); a completion that finds
no room waits for its group.

Why bother: a group is ready only when its longest completion ends. At the 7B GSM8K shape 4 of the 16 groups hold a
completion at the 4,096-token cap and end with the generate; trained by groups, their 46% of the update can only
run after it (`benchmarks/overlap_model.py`, docs/step-cost.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from qerl.rollout.base import Piece
from qerl.training.gpu_sharing import KEY
from qerl.training.group_trainer import GroupResult, GroupTrainer, merge_updates
from qerl.training.update import TrainBatch, UpdateResult

#: groups still generating below which the engine hands over their completions as they end (each such group holds
#: one gradient buffer per reward value seen)
OPEN_GROUPS = 4

#: gradient buffers held at once, over all open groups and reward values (each the adapter's size in float32: 0.32 GB
#: for the 7B recipe's r32 adapter); an early completion whose (group, reward value) would need one more waits and
#: trains with its group
MAX_BUFFERS = 8

#: update metrics linear in the advantages (at ratio 1): scaled by the advantage when a buffer is released
ADVANTAGE_LINEAR = ("loss", "policy_loss")


def scaled(update: UpdateResult, advantage: float) -> UpdateResult:
    """An update trained with advantage 1, as if with `advantage` (its advantage-linear metrics scaled)."""
    return UpdateResult(metrics={k: v * advantage if k in ADVANTAGE_LINEAR else v for k, v in update.metrics.items()},
                        finite=update.finite)


@dataclass
class Buffer:
    """One open group's early completions of one shaped reward value: their summed gradient (float32, one tensor
    per trainable parameter), their update metrics (trained with advantage 1) and their rows in the group."""

    grads: list[torch.Tensor | None]
    updates: list[UpdateResult] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)


class CompletionTrainer(GroupTrainer):
    """A `GroupTrainer` that also takes the early completions of open groups (`submit_piece`)."""

    def __init__(self, *args, parameters: list[torch.nn.Parameter], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.parameters = parameters
        self.buckets: dict[int, dict[float, Buffer]] = {}  # open group -> shaped reward value -> its buffer
        self.first_start: dict[int, float] = {}

    def feed(self, backend, prompt_ids: list[list[int]], sampling) -> None:
        """Step `backend`'s stream, queueing each piece as it comes (`generate_pieces`)."""
        for piece in backend.generate_pieces(prompt_ids, sampling, OPEN_GROUPS):
            self.submit_piece(piece)

    def submit_piece(self, piece: Piece) -> None:
        """Queue a piece of the rollout (`RolloutBackend.generate_pieces`), made on the main stream."""
        ready = None
        if self.stream is not None:
            ready = torch.cuda.Event()
            ready.record()
        self.futures.append(self.pool.submit(self._run_piece, piece, ready))

    def _run_piece(self, piece: Piece, ready) -> GroupResult | None:
        try:
            with self._on_stream(ready):
                self.first_start.setdefault(piece.index, time.perf_counter() - self.start)
                if piece.complete:
                    return self._finish(piece)
                self._train_early(piece)
                return None
        except BaseException:
            self.failed = True
            raise

    def _train_early(self, piece: Piece) -> None:
        if self.failed:
            return
        scored = self.score(piece.index, piece.rollout)
        shaped = self.algorithm.shape_rewards(scored.rewards, piece.rollout.lengths, self.max_new_tokens)
        if not bool(torch.isfinite(shaped).all()):
            self.failed = True  # scored whole, the group says the same; the step is skipped
            return
        values = [float(v) for v in shaped.tolist()]
        held = self.buckets.setdefault(piece.index, {})
        for value in sorted(set(values)):
            if value not in held and sum(map(len, self.buckets.values())) >= MAX_BUFFERS:
                continue  # no room for another buffer: these train with their group
            rows = [i for i, v in enumerate(values) if v == value]
            if not self._into_bucket(held, value, piece.rollout.subgroup(rows), [piece.rows[i] for i in rows]):
                self.failed = True
                return

    def _into_bucket(self, held: dict[float, Buffer], value: float, part, rows: list[int]) -> bool:
        """Back-propagate `part` (the group's `rows`) with advantage 1 into `held[value]`, the step's gradient
        aside."""
        saved = [p.grad for p in self.parameters]
        for p in self.parameters:
            p.grad = None
        try:
            ones = torch.ones(part.num_rows, device=part.completion_ids.device)
            update = self.train(TrainBatch(part, ones, measure_mismatch=self.measure_mismatch()))
            if update.finite:
                buffer = held.setdefault(value, Buffer([None] * len(self.parameters)))
                for i, p in enumerate(self.parameters):
                    if p.grad is not None:
                        buffer.grads[i] = p.grad.float() if buffer.grads[i] is None else buffer.grads[i].add_(p.grad)
                buffer.updates.append(update)
                buffer.rows.extend(rows)
        finally:
            for p, grad in zip(self.parameters, saved):
                p.grad = grad
        return update.finite

    def _finish(self, piece: Piece) -> GroupResult:
        g, rollout = piece.index, piece.rollout
        scored = self.score(g, rollout)
        shaped = self.algorithm.shape_rewards(scored.rewards, rollout.lengths, self.max_new_tokens)
        advantages = self.algorithm.advantages(shaped, self.group_size)
        finite = bool(torch.isfinite(advantages).all()) and bool(torch.isfinite(shaped).all())
        update = None
        if finite and not self.failed:
            held = self.buckets.get(g, {})
            updates = self._release(g, held, shaped, advantages)
            early = {row for buffer in held.values() for row in buffer.rows}
            fresh = [row for row in range(rollout.num_rows) if row not in early]  # not trained before
            if fresh:
                rows = torch.tensor(fresh, device=advantages.device)
                updates.append(self.train(TrainBatch(rollout.subgroup(fresh), advantages[rows],
                                                     measure_mismatch=self.measure_mismatch())))
            update = merge_updates(updates)
            self.failed = not update.finite
        else:
            self.failed = True
        self.buckets.pop(g, None)
        return GroupResult(g, scored, shaped, advantages, update, finite, self.first_start.pop(g))

    def _release(self, group: int, held: dict[float, Buffer], shaped: torch.Tensor,
                 advantages: torch.Tensor) -> list[UpdateResult]:
        """Each early buffer of `group` into the gradient, times its reward value's advantage."""
        updates = []
        for value, buffer in held.items():
            found = advantages[buffer.rows].float()
            if any(float(shaped[row]) != value for row in buffer.rows) or \
                    not torch.allclose(found, found[0].expand_as(found)):
                raise RuntimeError(
                    f"`{KEY}_unit: completion`: group {group}'s completions with shaped reward {value} have different "
                    f"advantages ({found.tolist()}) or were rewarded differently when scored whole, so they cannot "
                    "share a gradient buffer: the reward or the algorithm's advantages are not a function of a "
                    f"completion's own reward. Set `{KEY}_unit: group`.")
            advantage = float(found[0])
            for p, grad in zip(self.parameters, buffer.grads):
                if grad is None:
                    continue
                if p.grad is None:
                    p.grad = (grad * advantage).to(p.dtype)
                else:
                    p.grad.add_((grad * advantage).to(p.grad.dtype))
            updates.extend(scaled(u, advantage) for u in buffer.updates)
        return updates
