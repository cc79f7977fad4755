"""Training under the rollout by completion (`qerl.training.completion_trainer`): completions trained as they end,
into one gradient buffer per reward value, then released with their group's advantages, give the whole batch's
gradient and loss - in any interleaving of the groups' pieces; what cannot be exact is refused."""
from __future__ import annotations

import os
import random
import sys

import pytest
import torch

from qerl.algorithms import DAPO, GRPO
from qerl.rollout.base import Piece
from qerl.training.completion_trainer import CompletionTrainer, scaled
from qerl.training.group_trainer import merge_updates, normalizer, scale_gradients
from qerl.training.overlap import stream_and_train
from qerl.training.scoring import Scored
from qerl.training.update import TrainBatch, UpdateResult, accumulate_gradients
from qerl.types import PromptBatch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rl_helpers import check_whole_batch

ALGORITHMS = [GRPO(), GRPO(loss_aggregation="token_mean"), GRPO(loss_aggregation="constant", max_completion_length=9),
              GRPO(scale_rewards=False), DAPO(max_resample_rounds=0)]
IDS = ["GRPO-seq-mean", "GRPO-token-mean", "DrGRPO-constant", "GRPO-unscaled", "DAPO"]


def reward_of(rollout) -> torch.Tensor:
    """A reward of each completion alone (so a piece and its whole group score it alike): 0, 0.5 or 1 by the sum
    of its token ids."""
    ids = (rollout.completion_ids * rollout.completion_mask).sum(dim=1)
    return (ids % 3).float() / 2


def score(index: int, rollout) -> Scored:
    rewards = reward_of(rollout)
    return Scored(rollout, PromptBatch(["p"], ["a"]), {"r": rewards}, rewards, rewards > 0)


def trainer_for(model, algorithm, group_size: int) -> CompletionTrainer:
    def train(batch: TrainBatch) -> UpdateResult:
        return accumulate_gradients(model, algorithm, batch, 2, 1.0, lambda loss: loss.backward(), totals=(1, 1.0))

    params = [p for p in model.parameters() if p.requires_grad]
    return CompletionTrainer(score, train, algorithm, group_size, 9, torch.device("cpu"), lambda: False,
                             parameters=params)


def pieces_of(r, seed: int) -> list[Piece]:
    """Every group as early pieces of one or two completions and a last, complete piece, the groups interleaved."""
    rng, queues = random.Random(seed), []
    for g in range(r.num_rows // r.group_size):
        group = r.select(r.group_index == g)
        order = list(range(r.group_size))
        rng.shuffle(order)
        early, late = order[:-1], sorted(order[-1:])
        pieces = [Piece(g, group.subgroup(rows), rows, complete=False)
                  for rows in ([early[:1], early[1:]] if len(early) > 1 else [early]) if rows]
        queues.append(pieces + [Piece(g, group, late, complete=True)])
    out = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        out.append(q.pop(0))
    return out


@pytest.fixture
def rollout_and_model(tiny_llama_rollout):  # tests/conftest.py
    return tiny_llama_rollout(["1+1=", "A much longer prompt here", "xyz", "9*9"], n=3)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=IDS)
def test_completions_trained_as_they_end_give_the_whole_batch_gradient(rollout_and_model, algorithm):
    model, r = rollout_and_model
    n, params = r.group_size, [p for p in model.parameters() if p.requires_grad]
    shaped = algorithm.shape_rewards(reward_of(r), r.lengths, 9)
    advantages = algorithm.advantages(shaped, n)
    assert len(set(shaped.tolist())) > 1  # the buffers split by value
    whole = accumulate_gradients(model, algorithm, TrainBatch(r, advantages), 2, 1.0, lambda loss: loss.backward())
    expected = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)

    trainer = trainer_for(model, algorithm, n)
    into_bucket, buffered = trainer._into_bucket, []
    trainer._into_bucket = lambda held, value, part, rows: buffered.extend(rows) or into_bucket(held, value, part, rows)
    for piece in pieces_of(r, seed=4):
        trainer.submit_piece(piece)
    results = trainer.results()
    assert [res.index for res in results] == [0, 1, 2, 3] and not trainer.buckets  # every buffer released
    assert len(buffered) == 8  # the two early completions of each group, each in its reward value's buffer
    combined = check_whole_batch(results, algorithm, r, advantages, whole, expected, params)
    assert combined["policy_loss"] == pytest.approx(whole.metrics["policy_loss"], abs=1e-6)


def test_completions_without_room_for_a_buffer_train_with_their_group(rollout_and_model, monkeypatch):
    import qerl.training.completion_trainer as ct

    model, r = rollout_and_model
    algorithm, n, params = GRPO(), r.group_size, [p for p in model.parameters() if p.requires_grad]
    advantages = algorithm.advantages(algorithm.shape_rewards(reward_of(r), r.lengths, 9), n)
    accumulate_gradients(model, algorithm, TrainBatch(r, advantages), 2, 1.0, lambda loss: loss.backward())
    expected = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)

    monkeypatch.setattr(ct, "MAX_BUFFERS", 1)
    trainer = trainer_for(model, algorithm, n)
    most = []
    into_bucket = trainer._into_bucket
    trainer._into_bucket = lambda *args: most.append(sum(map(len, trainer.buckets.values()))) or into_bucket(*args)
    for piece in pieces_of(r, seed=4):
        trainer.submit_piece(piece)
    results = trainer.results()
    assert most and max(most) <= 1  # never a second buffer
    tokens = float(r.completion_mask.sum())
    scale_gradients(params, normalizer(algorithm, r.num_rows, tokens))
    assert all(res.update.finite for res in results)
    for p, want in zip(params, expected):
        assert torch.allclose(p.grad, want, atol=1e-6, rtol=1e-4)


def test_a_group_handed_over_whole_trains_as_the_group_trainer_does(rollout_and_model):
    model, r = rollout_and_model
    algorithm, n = GRPO(), r.group_size
    trainer = trainer_for(model, algorithm, n)
    for g in range(4):
        trainer.submit_piece(Piece(g, r.select(r.group_index == g), list(range(n)), complete=True))
    results = trainer.results()
    assert all(res.update.finite for res in results) and not trainer.buckets


def test_a_non_finite_early_reward_skips_the_step(rollout_and_model):
    model, r = rollout_and_model
    algorithm, n = GRPO(), r.group_size
    trainer = trainer_for(model, algorithm, n)
    bad = r.select(r.group_index == 0)
    original = trainer.score

    def nan_for_group_0(index, rollout):
        out = original(index, rollout)
        if index == 0:
            out.rewards[:] = float("nan")
        return out

    trainer.score = nan_for_group_0
    trainer.submit_piece(Piece(0, bad.subgroup([1]), [1], complete=False))
    for g in range(1, 4):
        trainer.submit_piece(Piece(g, r.select(r.group_index == g), list(range(n)), complete=True))
    trainer.submit_piece(Piece(0, bad, [0, 2], complete=True))
    results = trainer.results()
    assert all(res.update is None for res in results)  # nothing trained after the first non-finite reward
    assert results[0].finite_rewards is False
    assert all(p.grad is None for p in model.parameters())


def test_a_reward_that_changes_when_scored_whole_is_refused(rollout_and_model):
    model, r = rollout_and_model
    n = r.group_size
    trainer = trainer_for(model, GRPO(), n)
    calls = {"n": 0}

    def drifting(index, rollout):  # the early piece gets 0.25, the whole group 0 / 1
        calls["n"] += 1
        rewards = torch.full((rollout.num_rows,), 0.25) if rollout.num_rows == 1 else torch.tensor([0.0, 1.0, 1.0])
        return Scored(rollout, PromptBatch(["p"], ["a"]), {"r": rewards}, rewards, rewards > 0)

    trainer.score = drifting
    group = r.select(r.group_index == 0)
    trainer.submit_piece(Piece(0, group.subgroup([0]), [0], complete=False))
    trainer.submit_piece(Piece(0, group, [1, 2], complete=True))
    with pytest.raises(RuntimeError, match=r"train_during_rollout_unit: completion`: group 0's completions"):
        trainer.results()


def test_the_update_metrics_merge_and_scale():
    a = UpdateResult(metrics={"loss": 1.0, "policy_loss": 2.0, "entropy": 3.0, "ratio_min": 0.9}, finite=True)
    b = UpdateResult(metrics={"loss": 0.5, "policy_loss": 1.0, "entropy": 1.0, "ratio_min": 0.8}, finite=True)
    assert scaled(a, -2.0).metrics == {"loss": -2.0, "policy_loss": -4.0, "entropy": 3.0, "ratio_min": 0.9}
    assert merge_updates([a, b]).metrics == {"loss": 1.5, "policy_loss": 3.0, "entropy": 4.0, "ratio_min": 0.8}
    assert not merge_updates([a, UpdateResult(metrics={"loss": float("nan")}, finite=False)]).finite


def test_an_unknown_unit_is_refused_by_its_key():
    with pytest.raises(ValueError, match=r"train_during_rollout_unit` 'token'"):
        stream_and_train(None, GRPO(), [], None, None, None, None, None, [], torch.device("cpu"), unit="token")


def test_a_unit_without_training_during_the_rollout_is_refused_by_its_keys():
    from rl_helpers import tiny_module

    with pytest.raises(ValueError, match=r"train_during_rollout_unit: completion`.*`model.init_args.train_during_rollout"):
        tiny_module(train_during_rollout_unit="completion")
    assert tiny_module(train_during_rollout=True, train_during_rollout_unit="completion").gradient_buffers == 8
