"""Collecting one step's training groups: prompts -> rollout (AQN on) -> rewards, refilled while groups are dropped."""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from qerl.distributed import global_draw
from qerl.scoring import Scored, concat_scored, score_rollout, select_groups
from qerl.step_metrics import StepTimer
from qerl.types import PromptBatch

if TYPE_CHECKING:
    from qerl.module import QeRLModule

_SEED_MIX = 1_000_003


def rollout_seed(base: int, step: int, draw: int) -> int:
    """Sampling seed of rollout `draw` of optimizer step `step`: a pure function, so a resumed run draws the same."""
    return (int(base) * _SEED_MIX + int(step) * 1009 + int(draw)) % (2**63)


def draw_prompts(module: QeRLModule, dataloader_iter: Iterator) -> PromptBatch:
    """The next prompt batch (Lightning's iterator yields (batch, batch_idx, dataloader_idx)); counted for resume."""
    item = next(dataloader_iter)
    module._batches_drawn += 1
    return item[0] if isinstance(item, tuple) else item


def generate_and_score(module: QeRLModule, batch: PromptBatch, timer: StepTimer, draw: int) -> Scored:
    """Sample `sampling.n` completions per prompt with this step's AQN noise, then score them."""
    ids = module.tokenizer(list(batch.prompts), add_special_tokens=False)["input_ids"]
    base = module.sampling.seed if module.sampling.seed is not None else module.seed
    sampling = dataclasses.replace(module.sampling, stop=list(module.sampling.stop),  # rank r of W: draws r, W+r, ..
                                   seed=rollout_seed(base, module.global_step, global_draw(draw)))
    sigma = module.noise_sigma
    noise = module.rollout.noise(sigma, module.noise_seed) if sigma > 0 else contextlib.nullcontext()
    with timer.phase("rollout"), noise:
        rollout = module.rollout.generate(ids, sampling)
    module.rollout.release_memory()
    with timer.phase("score"):
        return score_rollout(module.rewards, rollout, batch, module.sampling.max_new_tokens, module.accuracy_index)


def collect_groups(module: QeRLModule, dataloader_iter: Iterator, timer: StepTimer,
                   draw: int) -> tuple[Scored, list[Scored], int]:
    """One prompt batch of groups to train on, refilled from the next prompts while the algorithm drops groups.

    Returns (groups to train on, every scored rollout generated, refill rounds). At most
    `algorithm.max_resample_rounds` extra batches are drawn; if the epoch runs out or the rounds are
    spent, training uses what was kept (or, when nothing was, the last rollout: a zero-signal step).
    """
    algorithm, n = module.algorithm, module.sampling.n
    batch = draw_prompts(module, dataloader_iter)
    target, generated, kept, have, rounds = len(batch), [], [], 0, 0
    while True:
        scored = generate_and_score(module, batch, timer, draw + len(generated))
        generated.append(scored)
        keep = algorithm.keep_groups(scored.rewards, n).bool()
        if bool(keep.any()):
            kept.append(scored if bool(keep.all()) else select_groups(scored, keep))
        have += int(keep.sum())
        if have >= target or rounds >= algorithm.max_resample_rounds:
            break
        try:
            batch = draw_prompts(module, dataloader_iter)
        except StopIteration:
            break
        rounds += 1
    pad = getattr(module.rollout, "pad_id", 0)
    result = concat_scored(kept, pad) if kept else generated[-1]
    if result.num_groups > target:
        result = select_groups(result, torch.arange(result.num_groups, device=result.rewards.device) < target)
    return result, generated, rounds
