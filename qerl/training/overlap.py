"""Training under the rollout (`QeRLModule(train_during_rollout=True)`): a group's rewards, forward and backward run
as soon as its last completion ends, while the engine still decodes the other groups.

Why the gradient is the same: with one update per rollout (`num_iterations: 1`) and no KL term, the clipped
surrogate's gradient is linear in each completion's advantage, and the loss is a sum over completions divided by a
count of the whole batch (its completions, or its completion tokens for `token_mean`). A group's advantages depend
on its own rewards (checked when the step ends), so the groups' gradients add up in any order as unnormalised sums,
divided by the batch's count once every group is in (`normalizer`): the gradient of training after generation, up
to the order of float sums.

Where it overlaps: the groups are scored and trained on a worker thread, on a CUDA stream of their own, while the
main thread keeps stepping the engine. A generate at the recipes' shapes ends in a long small-batch tail (a few
completions at the length cap) that leaves the GPU's compute mostly idle; the groups that finished early train in
it. Only a backend that streams its groups and stays awake through training (`VLLM` without sleep mode) overlaps;
otherwise the groups train one after the other after generation, through the same code.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from lightning.pytorch.utilities import rank_zero_warn

from qerl.algorithms.base import Algorithm
from qerl.algorithms.surrogate import AGGREGATIONS
from qerl.noise.base import NoiseDraw
from qerl.rollout.base import RolloutBackend
from qerl.training.scoring import Scored, concat_scored
from qerl.training.step_metrics import StepTimer
from qerl.training.update import TrainBatch, UpdateResult
from qerl.types import Rollout, SamplingConfig

KEY = "model.init_args.train_during_rollout"


def normalizer(algorithm: Algorithm, num_sequences: int, num_tokens: float) -> float:
    """What turns the groups' unnormalised losses (counts 1) into the batch's loss: the algorithm's aggregation of a
    one-token probe under the batch's counts over the same under counts of 1 (1/R, 1/tokens or 1/R)."""
    aggregate = AGGREGATIONS[algorithm.loss_aggregation]
    probe = torch.ones(1, 1)
    limit = algorithm.max_completion_length or 1
    whole = aggregate(probe, probe, num_sequences=num_sequences, num_tokens=num_tokens, max_completion_length=limit)
    unit = aggregate(probe, probe, num_sequences=1, num_tokens=1.0, max_completion_length=limit)
    return float(whole / unit)


def check_train_during_rollout(algorithm: Algorithm, batches_per_step: int, rollout: object) -> None:
    """Refuse, naming the recipe key, what training under the rollout cannot do exactly."""
    name = type(algorithm).__name__
    why = None
    if algorithm.num_iterations != 1:
        why = (f"{name} makes {algorithm.num_iterations} updates per rollout (`algorithm.init_args.num_iterations`); "
               "a group can train during the rollout only when the rollout's one update is the only one")
    elif algorithm.beta > 0:
        why = f"{name} has a KL term (`algorithm.init_args.beta` = {algorithm.beta}), whose gradient is not linear in the advantages"
    elif algorithm.max_resample_rounds > 0:
        why = (f"{name} drops groups and refills the batch (dynamic sampling, `algorithm.init_args.max_resample_rounds`"
               f" = {algorithm.max_resample_rounds}): which groups train is known only when the refills are done")
    elif type(algorithm).loss is not Algorithm.loss:
        why = f"{name} overrides `loss`: its gradient is not known to be linear in the advantages"
    elif batches_per_step != 1:
        why = f"`model.init_args.batches_per_step` is {batches_per_step}: only one rollout per optimizer step streams"
    elif getattr(rollout, "importance_sampling_cap", None) is not None:
        why = ("`rollout.init_args.importance_sampling_cap` weights every token by the policy's log-probs of the whole "
               "rollout, measured before training")
    if why:
        raise ValueError(f"`{KEY}: true`: {why}. Set `{KEY}: false`, or change the setting named.")


def streams(backend: object, warn: bool = False) -> bool:
    """Whether `backend` can train groups during its rollout: it streams its groups (`VLLM`) and its engine stays
    awake through training. With `warn`, says once why not (the step then runs as without the setting)."""
    if getattr(backend, "streams_groups", False) and not getattr(backend, "sleep_mode", False):
        return True
    if warn:
        why = ("its engine sleeps while the policy trains (`rollout.init_args.enable_sleep_mode`), so the two cannot "
               "share the GPU" if getattr(backend, "streams_groups", False)
               else "it generates the whole batch at once (only `VLLM` hands groups over as they finish)")
        rank_zero_warn(f"`{KEY}: true` has no effect with {type(backend).__name__}: {why}. The groups train after "
                       "generation, as without it.")
    return False


def side_stream(device: torch.device, sm_share: float = 1.0):
    """(the update's CUDA stream, the green context it belongs to or None), made once per device and share.
    `sm_share` < 1 confines the update's kernels to that share of the GPU's SMs (a CUDA green context, rounded down
    to 8 SMs), so the engine's decode always finds the rest free; without green-context support in this torch, a
    plain stream and a warning."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _side_stream(index, float(sm_share))


@functools.cache
def _side_stream(index: int, sm_share: float):
    device = torch.device("cuda", index)
    if sm_share >= 1.0:
        return torch.cuda.Stream(device), None
    from torch.cuda import green_contexts

    total = torch.cuda.get_device_properties(device).multi_processor_count
    sms = max(8, int(total * sm_share) // 8 * 8)
    try:
        if not green_contexts.SUPPORTED:
            raise RuntimeError("this torch was built without green contexts")
        green = green_contexts.GreenContext.create(num_sms=sms, device_id=index)
        return green.Stream(), green
    except (RuntimeError, TypeError, AttributeError) as exc:
        rank_zero_warn(f"`{KEY}_sm_share` {sm_share}: no green context of {sms} of {total} SMs ({exc}); the update "
                       "shares every SM with the engine.")
        return torch.cuda.Stream(device), None


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
        self.stream, self._green = side_stream(device, sm_share) if device.type == "cuda" else (None, None)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qerl-train-under-rollout")
        self.futures: list[Future] = []
        self.failed = False
        self.start = time.perf_counter()

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
            done = [future.result() for future in self.futures]
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return sorted(done, key=lambda result: result.index)

    def abandon(self) -> None:
        """Stop after an error on the main thread: queued groups are dropped, the running one finishes."""
        self.failed = True
        self.pool.shutdown(wait=True, cancel_futures=True)


def combine_updates(updates: list[UpdateResult], scale: float, num_tokens: float) -> UpdateResult:
    """The groups' update metrics (unnormalised sums, counts of 1) as `accumulate_gradients` reports a whole batch:
    the loss times `scale`, token-weighted means over the batch's `num_tokens`, extremes over all groups."""
    if not updates or not all(u.finite for u in updates):
        return UpdateResult(metrics={"loss": float("nan")}, finite=False)
    sums: dict[str, float] = {}
    extremes: dict[str, float] = {}
    for update in updates:
        for key, value in update.metrics.items():
            if key.endswith(("_min", "_max")):
                pick = min if key.endswith("_min") else max
                extremes[key] = pick(extremes.get(key, value), value)
            else:
                sums[key] = sums.get(key, 0.0) + value
    tokens = max(1.0, num_tokens)
    metrics = {key: (value * scale if key == "loss" else value / tokens) for key, value in sums.items()}
    metrics.update(extremes)
    return UpdateResult(metrics=metrics, finite=True)


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


@dataclass
class StreamedStep:
    """What a step trained under the rollout leaves for the module: the scored groups joined in prompt order, their
    shaped rewards and advantages, the combined update (gradients scaled, optimizer not yet stepped)."""

    scored: Scored
    shaped: torch.Tensor
    advantages: torch.Tensor
    update: UpdateResult
    finite_rewards: bool
    overlapped_groups: int  # groups whose training began before the engine's last group finished


def stream_and_train(backend, algorithm: Algorithm, prompt_ids: list[list[int]], sampling: SamplingConfig,
                     score: Callable[[int, Rollout], Scored], noise: NoiseDraw, timer: StepTimer,
                     train: Callable[[TrainBatch], UpdateResult], parameters: list[torch.nn.Parameter],
                     device: torch.device, sm_share: float = 1.0) -> StreamedStep:
    """Generate `prompt_ids` with `backend` (this step's AQN noise in its engine) and train each group as it
    finishes: `score(index, group)` scores it, `train` runs its forward and backward with counts of 1 (on
    `sm_share` of the SMs, `side_stream`). The parameters' gradients end as the whole batch's (`normalizer`); the
    caller clips and steps."""
    n = sampling.n
    trainer = GroupTrainer(score, train, algorithm, n, sampling.max_new_tokens, device,
                           lambda: bool(getattr(backend, "mismatch_deferred", False)),
                           sm_share if streams(backend) else 1.0)
    if streams(backend):
        results, scored, generated_at = _stream(backend, prompt_ids, sampling, noise, timer, trainer)
    else:  # the whole batch first (the backend's own noise block and scoring), then the groups one by one
        noisy = (backend.noise(noise.sigma, noise.seed, noise.relative) if noise.sigma > 0
                 else contextlib.nullcontext())
        with timer.phase("rollout"), noisy:
            held = list(RolloutBackend.generate_groups(backend, prompt_ids, sampling))
        backend.release_memory()
        generated_at = time.perf_counter() - trainer.start
        with timer.phase("train"):
            for index, rollout in held:
                trainer.submit(index, rollout)
            results = trainer.results()
        scored = concat_scored([r.scored for r in results], backend.pad_id)
    shaped = torch.cat([r.shaped for r in results])
    advantages = torch.cat([r.advantages for r in results])
    finite_rewards = all(r.finite_rewards for r in results)
    update = UpdateResult(metrics={"loss": float("nan")}, finite=False)
    if finite_rewards:
        check_group_local(algorithm, shaped, advantages, n)
        tokens = float(scored.rollout.completion_mask.sum())
        scale = normalizer(algorithm, scored.rollout.num_rows, tokens)
        update = combine_updates([r.update for r in results], scale, tokens)
        if update.finite:
            scale_gradients(parameters, scale)
    overlapped = sum(1 for r in results if r.update is not None and r.started_s < generated_at)
    return StreamedStep(scored, shaped, advantages, update, finite_rewards, overlapped)


#: seconds a thread may hold the GIL while another waits, during a stream (Python's default is 5 ms): the engine's
#: loop needs it for about a millisecond every decode step, and the update's Python would otherwise delay each
#: small-batch step (~5 ms of GPU time) by up to a whole turn
GIL_TURN_S = 0.0005


@contextlib.contextmanager
def short_gil_turns() -> Iterator[None]:
    """`sys.setswitchinterval(GIL_TURN_S)` for the block, the previous value restored after."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(GIL_TURN_S)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


#: whether the engine's decode runs on a stream of the highest priority while groups train (`engine_first`)
ENGINE_FIRST = True


@contextlib.contextmanager
def engine_first(device: torch.device) -> Iterator[None]:
    """On CUDA, the block's kernels (the engine's decode, launched by this thread) go to a stream of the highest
    priority, ordered after and before the thread's current stream: when a decode kernel and the update's kernels
    both wait for SMs, the decode's blocks are dispatched first. vLLM launches on whatever stream is current
    (`torch.cuda.current_stream()`), its CUDA graphs included. Elsewhere, or with `ENGINE_FIRST` off, nothing
    changes."""
    if device.type != "cuda" or not ENGINE_FIRST:
        yield
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    urgent, before = _urgent_stream(index), torch.cuda.current_stream(index)
    urgent.wait_stream(before)
    try:
        with torch.cuda.stream(urgent):
            yield
    finally:
        before.wait_stream(urgent)


@functools.cache
def _urgent_stream(index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(torch.device("cuda", index), priority=-100)  # mapped to the greatest priority


def _stream(backend, prompt_ids: list[list[int]], sampling: SamplingConfig, noise: NoiseDraw, timer: StepTimer,
            trainer: GroupTrainer) -> tuple[list[GroupResult], Scored, float]:
    """The engine streams its groups (the noise in the engine only) while `trainer` trains them; then the work on
    the whole rollout that had to wait for the policy (`finish_groups`), still under the engine's noise."""
    noisy = (backend.engine_noise(noise.sigma, noise.seed, noise.relative) if noise.sigma > 0
             else contextlib.nullcontext())
    with noisy, short_gil_turns():
        with timer.phase("rollout"), engine_first(trainer.device):
            try:
                for index, rollout in backend.generate_groups(prompt_ids, sampling):
                    trainer.submit(index, rollout)
            except BaseException:
                trainer.abandon()
                raise
            generated_at = time.perf_counter() - trainer.start
        with timer.phase("train"):
            results = trainer.results()
        scored = concat_scored([r.scored for r in results], backend.pad_id)
        with timer.phase("rollout"):
            backend.finish_groups(scored.rollout, sampling)  # e.g. the mismatch forward under the engine's Z
    backend.release_memory()
    return results, scored, generated_at
