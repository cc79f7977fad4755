"""Rollout + rewards: `Scored` completions, group selection (DAPO's dynamic sampling) and batch joining."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qerl.rewards.base import Reward
from qerl.types import PromptBatch, Rollout


@dataclass
class Scored:
    """A rollout with its prompts and the score of every completion.

    `scores` holds the raw score of each reward (R,); `rewards` their weighted sum (R,);
    `correct` (R,) bool marks completions the accuracy reward scored above 0.
    """

    rollout: Rollout
    prompts: PromptBatch
    scores: dict[str, torch.Tensor]
    rewards: torch.Tensor
    correct: torch.Tensor

    @property
    def num_groups(self) -> int:
        return self.rollout.num_rows // self.rollout.group_size


def reward_names(rewards: list[Reward]) -> list[str]:
    """Log names of the rewards, made unique (`Name`, `Name_2`, ...) when a reward class is used twice."""
    names, seen = [], {}
    for reward in rewards:
        base = reward.name
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def score_rollout(
    rewards: list[Reward], rollout: Rollout, prompts: PromptBatch, max_new_tokens: int, accuracy_index: int = 0,
    step: int | None = None,
) -> Scored:
    """Call every reward on the completions (gold answers and meta repeated per group) and sum them by weight.

    Rewards get meta keys `lengths` (generated tokens per completion), `truncated`, `max_new_tokens`,
    `meta` (the prompt's meta dict), `prompts` (the prompt text) and `completion_ids` (token ids), all per
    completion, and `step` (the optimizer step; None outside training).
    """
    n = rollout.group_size
    answers = [a for a in prompts.answers for _ in range(n)]
    metas = [m for m in (prompts.meta or [{}] * len(prompts)) for _ in range(n)]
    lengths = rollout.lengths.tolist()
    kwargs = {"lengths": lengths, "truncated": rollout.truncated.tolist(), "max_new_tokens": max_new_tokens,
              "meta": metas, "prompts": [p for p in prompts.prompts for _ in range(n)], "step": step,
              "completion_ids": [ids[:k] for ids, k in zip(rollout.completion_ids.tolist(), lengths)]}
    device = rollout.completion_ids.device
    scores: dict[str, torch.Tensor] = {}
    total = torch.zeros(rollout.num_rows, dtype=torch.float32, device=device)
    for name, reward in zip(reward_names(rewards), rewards):
        values = reward(rollout.texts, answers, **kwargs)
        if len(values) != rollout.num_rows:
            raise ValueError(f"Reward {name} returned {len(values)} scores for {rollout.num_rows} completions.")
        score = torch.tensor([float(v) for v in values], dtype=torch.float32, device=device)
        scores[name] = score
        total = total + reward.weight * score
    correct = list(scores.values())[accuracy_index] > 0
    return Scored(rollout=rollout, prompts=prompts, scores=scores, rewards=total, correct=correct)


def select_groups(scored: Scored, keep: torch.Tensor) -> Scored:
    """The groups where `keep` (num_groups,) is True, rows and prompts alike."""
    rows = keep.to(scored.rewards.device).repeat_interleave(scored.rollout.group_size)
    idx = keep.nonzero().flatten().tolist()
    p = scored.prompts
    prompts = PromptBatch(prompts=[p.prompts[i] for i in idx], answers=[p.answers[i] for i in idx],
                          meta=[p.meta[i] for i in idx] if p.meta else [])
    return Scored(rollout=scored.rollout.select(rows), prompts=prompts,
                  scores={k: v[rows] for k, v in scored.scores.items()}, rewards=scored.rewards[rows],
                  correct=scored.correct[rows])


def concat_scored(parts: list[Scored], pad_id: int) -> Scored:
    """Join scored rollouts of the same group size into one (prompts left-padded, completions right-padded)."""
    if len(parts) == 1:
        return parts[0]
    rollout = Rollout.concat([p.rollout for p in parts], pad_id)
    prompts = PromptBatch(prompts=[x for p in parts for x in p.prompts.prompts],
                          answers=[x for p in parts for x in p.prompts.answers],
                          meta=[x for p in parts for x in (p.prompts.meta or [{}] * len(p.prompts))])
    return Scored(rollout=rollout, prompts=prompts,
                  scores={k: torch.cat([p.scores[k] for p in parts]) for k in parts[0].scores},
                  rewards=torch.cat([p.rewards for p in parts]), correct=torch.cat([p.correct for p in parts]))
