"""Rollout + rewards: `Scored` completions, group selection (DAPO's dynamic sampling) and batch joining."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

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
    rewards: list[Reward], rollout: Rollout, prompts: PromptBatch, max_new_tokens: int, accuracy_index: int = 0
) -> Scored:
    """Call every reward on the completions (gold answers and meta repeated per group) and sum them by weight.

    Rewards get meta keys `lengths` (generated tokens per completion), `truncated`, `max_new_tokens`,
    and `meta` (the prompt's meta dict, per completion).
    """
    n = rollout.group_size
    answers = [a for a in prompts.answers for _ in range(n)]
    metas = [m for m in (prompts.meta or [{}] * len(prompts)) for _ in range(n)]
    kwargs = {"lengths": rollout.lengths.tolist(), "truncated": rollout.truncated.tolist(),
                  "max_new_tokens": max_new_tokens, "meta": metas}
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


def _rows_of_groups(keep: torch.Tensor, n: int) -> torch.Tensor:
    return keep.repeat_interleave(n)


def select_groups(scored: Scored, keep: torch.Tensor) -> Scored:
    """The groups where `keep` (num_groups,) is True, rows and prompts alike."""
    n = scored.rollout.group_size
    rows = _rows_of_groups(keep.to(scored.rewards.device), n)
    idx = keep.nonzero().flatten().tolist()
    r = scored.rollout
    rollout = Rollout(
        prompt_ids=r.prompt_ids[rows], prompt_mask=r.prompt_mask[rows], completion_ids=r.completion_ids[rows],
        completion_mask=r.completion_mask[rows], logprobs=r.logprobs[rows],
        texts=[t for t, k in zip(r.texts, rows.tolist()) if k],
        group_index=torch.arange(len(idx), device=r.group_index.device).repeat_interleave(n),
        truncated=r.truncated[rows], group_size=n,
        importance_weights=r.importance_weights[rows] if r.importance_weights is not None else None,
    )
    p = scored.prompts
    prompts = PromptBatch(prompts=[p.prompts[i] for i in idx], answers=[p.answers[i] for i in idx],
                          meta=[p.meta[i] for i in idx] if p.meta else [])
    return Scored(rollout=rollout, prompts=prompts, scores={k: v[rows] for k, v in scored.scores.items()},
                  rewards=scored.rewards[rows], correct=scored.correct[rows])


def _cat(tensors: list[torch.Tensor], pad, left: bool) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    padded = [nn.functional.pad(t, (width - t.shape[1], 0) if left else (0, width - t.shape[1]), value=pad)
              for t in tensors]
    return torch.cat(padded)


def concat_scored(parts: list[Scored], pad_id: int) -> Scored:
    """Join scored rollouts of the same group size into one (prompts left-padded, completions right-padded)."""
    if len(parts) == 1:
        return parts[0]
    n = parts[0].rollout.group_size
    rs = [p.rollout for p in parts]
    groups = sum(p.num_groups for p in parts)
    device = rs[0].group_index.device
    rollout = Rollout(
        prompt_ids=_cat([r.prompt_ids for r in rs], pad_id, True), prompt_mask=_cat([r.prompt_mask for r in rs], 0, True),
        completion_ids=_cat([r.completion_ids for r in rs], pad_id, False),
        completion_mask=_cat([r.completion_mask for r in rs], 0, False),
        logprobs=_cat([r.logprobs for r in rs], 0.0, False), texts=[t for r in rs for t in r.texts],
        group_index=torch.arange(groups, device=device).repeat_interleave(n),
        truncated=torch.cat([r.truncated for r in rs]), group_size=n,
        importance_weights=(_cat([r.importance_weights for r in rs], 0.0, False)
                            if all(r.importance_weights is not None for r in rs) else None),
    )
    prompts = PromptBatch(prompts=[x for p in parts for x in p.prompts.prompts],
                          answers=[x for p in parts for x in p.prompts.answers],
                          meta=[x for p in parts for x in (p.prompts.meta or [{}] * len(p.prompts))])
    return Scored(rollout=rollout, prompts=prompts,
                  scores={k: torch.cat([p.scores[k] for p in parts]) for k in parts[0].scores},
                  rewards=torch.cat([p.rewards for p in parts]), correct=torch.cat([p.correct for p in parts]))
