"""Collecting one step's training groups: prompts -> rollout (AQN on) -> rewards, refilled while groups are dropped."""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from qerl.algorithms.base import Algorithm
from qerl.noise.base import NoiseDraw
from qerl.parallel import sum_over_ranks
from qerl.rewards.base import Reward
from qerl.rollout.base import RolloutBackend
from qerl.training.distributed import global_draw
from qerl.training.scoring import Scored, concat_scored, score_rollout, select_groups
from qerl.training.step_metrics import StepTimer
from qerl.types import PromptBatch, SamplingConfig


@dataclass
class Collector:
    """The parts collecting a step's groups uses: tokenizer, rollout backend, rewards, algorithm, sampling."""

    tokenizer: Any
    rollout: RolloutBackend
    rewards: list[Reward]
    algorithm: Algorithm
    sampling: SamplingConfig
    seed: int
    accuracy_index: int = 0


@dataclass
class Collected:
    """One prompt batch's groups to train on, every scored rollout generated, refill rounds, batches drawn.

    `fallback` is True when no group had a reward spread and `kept` is the last rollout, trained on anyway.
    """

    kept: Scored
    generated: list[Scored]
    rounds: int
    batches_drawn: int
    fallback: bool = False


_SEED_MIX = 1_000_003


def rollout_seed(base: int, step: int, draw: int) -> int:
    """Sampling seed of rollout `draw` of optimizer step `step`: a pure function, so a resumed run draws the same."""
    return (int(base) * _SEED_MIX + int(step) * 1009 + int(draw)) % (2**63)


def draw_prompts(dataloader_iter: Iterator) -> PromptBatch:
    """The next prompt batch (Lightning's iterator yields (batch, batch_idx, dataloader_idx))."""
    item = next(dataloader_iter)
    return item[0] if isinstance(item, tuple) else item


def step_sampling(parts: Collector, step: int, draw: int = 0) -> SamplingConfig:
    """The sampling settings of rollout `draw` of step `step`, with its seed (`rollout_seed`)."""
    base = parts.sampling.seed if parts.sampling.seed is not None else parts.seed
    # rank r of W: draws r, W+r, ..
    return dataclasses.replace(parts.sampling, stop=list(parts.sampling.stop),
                               seed=rollout_seed(base, step, global_draw(draw)))


def generate_and_score(parts: Collector, batch: PromptBatch, timer: StepTimer, step: int, draw: int,
                       noise: NoiseDraw) -> Scored:
    """Sample `sampling.n` completions per prompt with this step's AQN noise, then score them."""
    ids = parts.tokenizer(list(batch.prompts), add_special_tokens=False)["input_ids"]
    sampling = step_sampling(parts, step, draw)
    noisy = (parts.rollout.noise(noise.sigma, noise.seed, noise.relative) if noise.sigma > 0
             else contextlib.nullcontext())
    with timer.phase("rollout"), noisy:
        rollout = parts.rollout.generate(ids, sampling)
    parts.rollout.release_memory()
    with timer.phase("score"):
        return score_rollout(parts.rewards, rollout, batch, parts.sampling.max_new_tokens, parts.accuracy_index, step)


def collect_groups(parts: Collector, dataloader_iter: Iterator, timer: StepTimer, step: int, draw: int,
                   noise: NoiseDraw) -> Collected:
    """One prompt batch of groups to train on, refilled from the next prompts while the algorithm drops groups.

    At most `algorithm.max_resample_rounds` extra batches are drawn; if the epoch runs out or the rounds are
    spent, training uses what was kept (or, when nothing was, the last rollout: `Collected.fallback`).
    """
    algorithm, n = parts.algorithm, parts.sampling.n
    batch = draw_prompts(dataloader_iter)
    target, generated, kept, have, rounds, drawn = len(batch), [], [], 0, 0, 1
    while True:
        scored = generate_and_score(parts, batch, timer, step, draw + len(generated), noise)
        generated.append(scored)
        keep = algorithm.keep_groups(scored.rewards, n).bool()
        if bool(keep.any()):
            kept.append(scored if bool(keep.all()) else select_groups(scored, keep))
        have += int(keep.sum())
        if have >= target or rounds >= algorithm.max_resample_rounds:
            break
        try:
            batch = draw_prompts(dataloader_iter)
        except StopIteration:
            break
        drawn += 1
        rounds += 1
    # every group dropped (e.g. every reward 0): train on the last rollout; the module says so once a step
    result = concat_scored(kept, parts.rollout.pad_id) if kept else generated[-1]
    if result.num_groups > target:
        result = select_groups(result, torch.arange(result.num_groups, device=result.rewards.device) < target)
    return Collected(result, generated, rounds, drawn, fallback=not kept)


def fallback_rows(collected: list[Collected]) -> torch.Tensor:
    """Bool (R,) over a step's training rows (the `kept` of each, joined in order): True on fallback rollouts."""
    return torch.cat([torch.full((c.kept.rollout.num_rows,), c.fallback, dtype=torch.bool) for c in collected])


def no_signal_line(step: int, algorithm: Algorithm, rounds: int, mean_abs_advantage: float) -> str:
    """The one log line of a step that trains on a fallback rollout, with the advantages it really has."""
    name = type(algorithm).__name__
    signal = "" if mean_abs_advantage > 0 else " - no update signal"
    return (f"step {step}: {name}: no group had a reward spread after {rounds} resample round(s) of at most "
            f"{algorithm.max_resample_rounds}; training on the last rollout, whose advantages come from reward "
            f"shaping only (DAPO: the overlong length penalty): mean |A| = {mean_abs_advantage:.4g}{signal}")


def data_metrics(collected: list[Collected], train_groups: int, seen_groups: int, advantages: torch.Tensor, n: int,
                 step: int, algorithm: Algorithm, device: torch.device) -> dict[str, float]:
    """A step's `data/*` scalars, summed over ranks: the share of the groups seen that had a reward spread, the
    share of the trained groups that came from a fallback rollout, the resample rounds; and the one line of a step
    that trains on a fallback rollout (over every rank's fallback rows)."""
    on_fallback = fallback_rows(collected)  # rows of rollouts whose groups had no spread (on the host)
    rows = int(on_fallback.sum())
    fallback_abs = float(advantages[on_fallback.to(advantages.device)].abs().sum()) if rows else 0.0
    trained, seen, fallback_groups, fallback_abs, fallback_count = sum_over_ranks(
        [train_groups, seen_groups, rows / n, fallback_abs, rows], device)
    refills = sum(got.rounds for got in collected)
    if fallback_count:
        rounds = max((got.rounds for got in collected if got.fallback), default=refills)
        rank_zero_warn(no_signal_line(step, algorithm, rounds, fallback_abs / fallback_count))
    return {"data/groups_kept_frac": (trained - fallback_groups) / max(1.0, seen),  # groups with signal
            "data/fallback_frac": fallback_groups / max(1.0, trained), "data/refill_rounds": float(refills)}
