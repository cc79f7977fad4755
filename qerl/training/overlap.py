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
otherwise the groups train one after the other after generation, through the same code. `group_trainer.py` holds
the worker and the arithmetic, `gpu_sharing.py` how the two threads share the GPU, `completion_trainer.py` the
variant that trains the last groups' completions as they end (`train_during_rollout_unit: completion`).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from lightning.pytorch.utilities import rank_zero_warn

from qerl.algorithms.base import Algorithm
from qerl.noise.base import NoiseDraw
from qerl.rollout.base import RolloutBackend
from qerl.training.completion_trainer import CompletionTrainer
from qerl.training.gpu_sharing import KEY, engine_first, short_gil_turns
from qerl.training.group_trainer import (
    GroupResult,
    GroupTrainer,
    check_group_local,
    combine_updates,
    normalizer,
    scale_gradients,
)
from qerl.training.scoring import Scored, concat_scored
from qerl.training.step_metrics import StepTimer
from qerl.training.update import TrainBatch, UpdateResult
from qerl.types import Rollout, SamplingConfig

#: what the worker trains as one piece (`train_during_rollout_unit`)
UNITS = ("group", "completion")


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
                     device: torch.device, sm_share: float = 1.0, unit: str = "group") -> StreamedStep:
    """Generate `prompt_ids` with `backend` (this step's AQN noise in its engine) and train each group as it
    finishes: `score(index, group)` scores it, `train` runs its forward and backward with counts of 1 (on
    `sm_share` of the SMs, `side_stream`). `unit` "completion": the completions of the last groups still
    generating train as they end (`qerl.training.completion_trainer`). The parameters' gradients end as the whole
    batch's (`normalizer`); the caller clips and steps."""
    if unit not in UNITS:
        raise ValueError(f"`{KEY}_unit` {unit!r}: expected one of {', '.join(UNITS)}")
    n, overlap = sampling.n, streams(backend)
    by_completion = overlap and unit == "completion" and getattr(backend, "streams_completions", False)
    args = (score, train, algorithm, n, sampling.max_new_tokens, device,
            lambda: bool(getattr(backend, "mismatch_deferred", False)), sm_share if overlap else 1.0)
    trainer = CompletionTrainer(*args, parameters=parameters) if by_completion else GroupTrainer(*args)
    if overlap:
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


def _stream(backend, prompt_ids: list[list[int]], sampling: SamplingConfig, noise: NoiseDraw, timer: StepTimer,
            trainer: GroupTrainer) -> tuple[list[GroupResult], Scored, float]:
    """The engine streams its groups (the noise in the engine only) while `trainer` trains them; then the work on
    the whole rollout that had to wait for the policy (`finish_groups`), still under the engine's noise."""
    noisy = (backend.engine_noise(noise.sigma, noise.seed, noise.relative) if noise.sigma > 0
             else contextlib.nullcontext())
    with noisy, short_gil_turns():
        with timer.phase("rollout"), engine_first(trainer.device):
            try:
                trainer.feed(backend, prompt_ids, sampling)
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
