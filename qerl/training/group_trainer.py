"""`GroupTrainer`: one rollout's groups scored and trained one by one, in the order they finish, on a worker thread;
and the arithmetic that makes their unnormalised gradient sums the whole batch's (`qerl.training.overlap` says why
it is exact)."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from qerl.algorithms.base import Algorithm
from qerl.algorithms.surrogate import AGGREGATIONS
from qerl.training.gpu_sharing import KEY, side_stream
from qerl.training.scoring import Scored
from qerl.training.update import TrainBatch, UpdateResult
from qerl.types import Rollout


def normalizer(algorithm: Algorithm, num_sequences: int, num_tokens: float) -> float:
    """What turns the groups' unnormalised losses (counts 1) into the batch's loss: the algorithm's aggregation of a
    one-token probe under the batch's counts over the same under counts of 1 (1/R, 1/tokens or 1/R)."""
    aggregate = AGGREGATIONS[algorithm.loss_aggregation]
    probe = torch.ones(1, 1)
    limit = algorithm.max_completion_length or 1
    whole = aggregate(probe, probe, num_sequences=num_sequences, num_tokens=num_tokens, max_completion_length=limit)
    unit = aggregate(probe, probe, num_sequences=1, num_tokens=1.0, max_completion_length=limit)
    return float(whole / unit)


@dataclass
class GroupResult:
    """One group, scored and (unless `update` is None) trained: its gradient is in the parameters' `.grad`."""

    index: int
    scored: Scored
    shaped: torch.Tensor
    advantages: torch.Tensor
    update: UpdateResult | None
    finite_rewards: bool
    started_s: float  # when its training began, seconds after the stream started


class GroupTrainer:
    """Scores, shapes and trains the groups handed to it, one at a time, on a worker thread (and, on CUDA, a stream
    of its own, so the engine's kernels on the main stream are not queued behind the update's).

    `score(index, rollout)` scores one group; `train(batch)` runs its forward and backward with counts of 1
    (`accumulate_gradients(..., totals=(1, 1.0))`). After the first non-finite reward or loss no further group
    trains: the step is skipped as it would be after generation.
    """

    def __init__(self, score: Callable[[int, Rollout], Scored], train: Callable[[TrainBatch], UpdateResult],
                 algorithm: Algorithm, group_size: int, max_new_tokens: int, device: torch.device,
                 measure_mismatch: Callable[[], bool], sm_share: float = 1.0) -> None:
        self.score, self.train, self.algorithm = score, train, algorithm
        self.group_size, self.max_new_tokens, self.device = group_size, max_new_tokens, device
        self.measure_mismatch = measure_mismatch
        self.stream = side_stream(device, sm_share)[0] if device.type == "cuda" else None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qerl-train-under-rollout")
        self.futures: list[Future] = []
        self.failed = False
        self.start = time.perf_counter()

    def feed(self, backend, prompt_ids: list[list[int]], sampling) -> None:
        """Step `backend`'s stream, queueing each group the step it finishes (`generate_groups`)."""
        for index, rollout in backend.generate_groups(prompt_ids, sampling):
            self.submit(index, rollout)

    def submit(self, index: int, rollout: Rollout) -> None:
        """Queue a finished group (its tensors were made on the main stream: the worker's stream waits for them)."""
        ready = None
        if self.stream is not None:
            ready = torch.cuda.Event()
            ready.record()
        self.futures.append(self.pool.submit(self._run, index, rollout, ready))

    @contextlib.contextmanager
    def _on_stream(self, ready) -> Iterator[None]:
        if self.stream is None:
            yield
            return
        if self.device.index is not None:
            torch.cuda.set_device(self.device)  # the current device is per thread
        self.stream.wait_event(ready)
        with torch.cuda.stream(self.stream):
            yield
        self.stream.synchronize()  # this group's tensors may be freed by the main thread afterwards

    def _run(self, index: int, rollout: Rollout, ready) -> GroupResult:
        try:
            return self._score_and_train(index, rollout, ready)
        except BaseException:
            self.failed = True  # the groups queued after it are not trained; `results` raises this
            raise

    def _score_and_train(self, index: int, rollout: Rollout, ready) -> GroupResult:
        with self._on_stream(ready):
            scored = self.score(index, rollout)
            shaped = self.algorithm.shape_rewards(scored.rewards, rollout.lengths, self.max_new_tokens)
            advantages = self.algorithm.advantages(shaped, self.group_size)
            finite = bool(torch.isfinite(advantages).all()) and bool(torch.isfinite(shaped).all())
            started, update = time.perf_counter() - self.start, None
            if finite and not self.failed:
                update = self.train(TrainBatch(rollout, advantages, measure_mismatch=self.measure_mismatch()))
                self.failed = not update.finite
            else:
                self.failed = True
        return GroupResult(index, scored, shaped, advantages, update, finite, started)

    def results(self) -> list[GroupResult]:
        """Every group's result in prompt order, once all have run (an exception in the worker is raised here)."""
        try:
            done = [r for r in (future.result() for future in self.futures) if r is not None]  # None: an early piece
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return sorted(done, key=lambda result: result.index)

    def abandon(self) -> None:
        """Stop after an error on the main thread: queued groups are dropped, the running one finishes."""
        self.failed = True
        self.pool.shutdown(wait=True, cancel_futures=True)


def merge_updates(updates: list[UpdateResult | None]) -> UpdateResult:
    """Updates of unnormalised sums (counts of 1) as one: sums added, extremes (`_min`, `_max`) kept; not finite
    if any is not (None: not trained after a failure)."""
    if not updates or not all(u is not None and u.finite for u in updates):
        return UpdateResult(metrics={"loss": float("nan")}, finite=False)
    metrics: dict[str, float] = {}
    for update in updates:
        for key, value in update.metrics.items():
            if key.endswith(("_min", "_max")):
                pick = min if key.endswith("_min") else max
                metrics[key] = pick(metrics.get(key, value), value)
            else:
                metrics[key] = metrics.get(key, 0.0) + value
    return UpdateResult(metrics=metrics, finite=True)


def combine_updates(updates: list[UpdateResult | None], scale: float, num_tokens: float) -> UpdateResult:
    """The groups' update metrics (unnormalised sums, counts of 1) as `accumulate_gradients` reports a whole batch:
    the loss times `scale`, token-weighted means over the batch's `num_tokens`, extremes over all groups."""
    merged = merge_updates(updates)
    if not merged.finite:
        return merged
    tokens = max(1.0, num_tokens)
    extreme = ("_min", "_max")
    return UpdateResult(metrics={k: v * scale if k == "loss" else v if k.endswith(extreme) else v / tokens
                                 for k, v in merged.metrics.items()}, finite=True)


def scale_gradients(parameters: list[torch.nn.Parameter], scale: float) -> None:
    """Divide the accumulated sums by the batch's count (`normalizer`), in place."""
    for p in parameters:
        if p.grad is not None:
            p.grad.mul_(scale)


def check_group_local(algorithm: Algorithm, shaped: torch.Tensor, advantages: torch.Tensor, group_size: int) -> None:
    """The per-group advantages must be the batch's: an algorithm whose advantages look across groups cannot
    train a group before the others are in."""
    whole = algorithm.advantages(shaped, group_size)
    if not torch.allclose(whole, advantages, rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"`{KEY}: true`: {type(algorithm).__name__}'s advantages depend on other groups' rewards "
                           "(computed per group they differ from the whole batch's); this step's update is not the "
                           f"batch's. Set `{KEY}: false` for this algorithm.")
