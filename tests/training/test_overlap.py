"""Training under the rollout (`qerl.training.overlap`, `qerl.training.group_trainer`): groups trained one by one, in any order, with counts of 1
and scaled at the end, give the whole batch's gradient; what cannot be done exactly is refused by its key."""
from __future__ import annotations

import os
import random
import sys

import pytest
import torch

from qerl.algorithms import DAPO, GRPO
from qerl.rollout import HF
from qerl.training.group_trainer import (
    GroupTrainer,
    check_group_local,
    combine_updates,
    normalizer,
)
from qerl.training.overlap import check_train_during_rollout, streams
from qerl.training.scoring import Scored
from qerl.training.update import TrainBatch, accumulate_gradients
from qerl.types import PromptBatch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rl_helpers import check_whole_batch, tiny_data, tiny_module, tiny_trainer

ALGORITHMS = [GRPO(), GRPO(loss_aggregation="token_mean"), GRPO(loss_aggregation="constant", max_completion_length=9),
              GRPO(scale_rewards=False)]
IDS = ["GRPO-seq-mean", "GRPO-token-mean", "DrGRPO-constant", "GRPO-unscaled"]


@pytest.fixture
def rollout_and_model(tiny_llama_rollout):  # tests/conftest.py
    return tiny_llama_rollout(["1+1=", "A much longer prompt here", "xyz", "9*9"], n=3)


def group_trainer(model, algorithm, rewards: torch.Tensor, group_size: int, train=None) -> GroupTrainer:
    """A CPU GroupTrainer scoring each group with the given rewards and training it with counts of 1 (or `train`)."""

    def score(index: int, rollout) -> Scored:
        rows = slice(index * group_size, (index + 1) * group_size)
        return Scored(rollout, PromptBatch(["p"], ["a"]), {"r": rewards[rows]}, rewards[rows], rewards[rows] > 0)

    def accumulate(batch: TrainBatch):
        return accumulate_gradients(model, algorithm, batch, 2, 1.0, lambda loss: loss.backward(), totals=(1, 1.0))

    return GroupTrainer(score, train or accumulate, algorithm, group_size, 9, torch.device("cpu"), lambda: False)


@pytest.mark.parametrize(("aggregation", "expected"), [("sequence_mean", 1 / 12), ("token_mean", 1 / 50),
                                                       ("constant", 1 / 12)])
def test_normalizer_is_the_batch_count_the_aggregation_divides_by(aggregation, expected):
    algorithm = GRPO(loss_aggregation=aggregation, max_completion_length=9)
    assert normalizer(algorithm, 12, 50.0) == pytest.approx(expected)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=IDS)
def test_groups_trained_in_any_order_then_scaled_give_the_whole_batch_gradient(rollout_and_model, algorithm):
    model, r = rollout_and_model
    n, params = r.group_size, [p for p in model.parameters() if p.requires_grad]
    rewards = torch.tensor([0.0, 1.0, 0.5, 1.0, 1.0, 1.0, 0.2, 0.0, 0.9, 0.3, 0.3, 0.7])  # one flat group
    advantages = algorithm.advantages(rewards, n)
    whole = accumulate_gradients(model, algorithm, TrainBatch(r, advantages), 2, 1.0, lambda loss: loss.backward())
    expected = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)

    trainer = group_trainer(model, algorithm, rewards, n)
    order = list(range(r.num_rows // n))
    random.Random(3).shuffle(order)
    for g in order:
        trainer.submit(g, r.select(r.group_index == g))
    results = trainer.results()
    assert [res.index for res in results] == sorted(order) and all(res.finite_rewards for res in results)
    check_whole_batch(results, algorithm, r, advantages, whole, expected, params)


def test_a_non_finite_reward_stops_the_groups_after_it_from_training(rollout_and_model):
    model, r = rollout_and_model
    n, algorithm = r.group_size, GRPO()
    rewards = torch.tensor([0.0, 1.0, float("nan")] + [0.0, 1.0, 0.5] * 3)

    trainer = group_trainer(model, algorithm, rewards, n)
    for g in range(4):
        trainer.submit(g, r.select(r.group_index == g))
    results = trainer.results()
    assert [res.finite_rewards for res in results] == [False, True, True, True]
    assert all(res.update is None for res in results)  # the step is skipped: nothing trained after the NaN
    assert all(p.grad is None for p in model.parameters())


class BatchMeanBaseline(GRPO):
    """Advantages against the whole batch's mean reward: they look across groups."""

    def advantages(self, rewards, group_size):
        return rewards - rewards.mean()


def test_advantages_that_look_across_groups_are_caught_when_the_step_ends():
    algorithm = BatchMeanBaseline()
    rewards = torch.tensor([0.0, 1.0, 1.0, 1.0])
    per_group = torch.cat([algorithm.advantages(rewards[:2], 2), algorithm.advantages(rewards[2:], 2)])
    with pytest.raises(RuntimeError, match=r"train_during_rollout: true`: BatchMeanBaseline's advantages depend"):
        check_group_local(algorithm, rewards, per_group, 2)


@pytest.mark.parametrize(("algorithm", "batches", "cap", "says"), [
    (GRPO(num_iterations=2), 1, None, r"num_iterations"),
    (GRPO(beta=0.04), 1, None, r"algorithm.init_args.beta"),
    (DAPO(), 1, None, r"max_resample_rounds"),
    (GRPO(), 2, None, r"batches_per_step` is 2"),
    (GRPO(), 1, 2.0, r"importance_sampling_cap"),
], ids=["iterations", "kl", "dynamic-sampling", "batches-per-step", "importance-sampling"])
def test_what_cannot_train_during_the_rollout_is_refused_by_its_key(algorithm, batches, cap, says):
    from qerl.rollout.vllm import VLLM

    with pytest.raises(ValueError, match=says) as info:
        check_train_during_rollout(algorithm, batches, VLLM(importance_sampling_cap=cap))
    assert "Set `model.init_args.train_during_rollout: false`" in str(info.value)


def test_only_a_streaming_engine_awake_through_training_overlaps():
    from qerl.rollout.vllm import VLLM

    assert streams(VLLM(enable_sleep_mode=False))
    with pytest.warns(UserWarning, match=r"engine sleeps while the policy trains"):
        assert not streams(VLLM(enable_sleep_mode=True), warn=True)
    with pytest.warns(UserWarning, match=r"no effect with HF: it generates the whole batch at once"):
        assert not streams(HF(), warn=True)


@pytest.mark.parametrize("share", [0.0, 1.5])
def test_an_sm_share_outside_zero_to_one_is_refused_by_its_key(share):
    with pytest.raises(ValueError, match=r"train_during_rollout_sm_share` must be in \(0, 1\]"):
        tiny_module(train_during_rollout=True, train_during_rollout_sm_share=share)


@pytest.mark.parametrize("failure", ["error", "nan"])
def test_a_group_that_fails_to_train_stops_the_groups_after_it(rollout_and_model, failure):
    from qerl.training.update import UpdateResult

    _, r = rollout_and_model
    n, trained = r.group_size, []

    def train(batch: TrainBatch):
        trained.append(batch.rollout.num_rows)
        if failure == "error":
            raise torch.OutOfMemoryError("CUDA out of memory (a group too long for the room left)")
        return UpdateResult(metrics={"loss": float("nan")}, finite=False)  # what accumulate_gradients says on NaN

    trainer = group_trainer(None, GRPO(), torch.tensor([0.0, 1.0, 0.5] * 4), n, train)
    for g in range(4):
        trainer.submit(g, r.select(r.group_index == g))
    if failure == "error":  # raised where the step collects the groups
        with pytest.raises(torch.OutOfMemoryError, match="a group too long"):
            trainer.results()
    else:  # the step is skipped: the combined update is not finite
        results = trainer.results()
        assert [res.update is None for res in results] == [False, True, True, True]
        assert not combine_updates([res.update for res in results], 0.1, 10.0).finite
    assert trained == [n]  # the first group's failure kept the other three from training


def test_with_a_backend_that_does_not_stream_the_module_warns_and_trains_after_generation(tmp_path):
    module = tiny_module(train_during_rollout=True)  # rollout: HF, the policy generates itself
    trainer = tiny_trainer(tmp_path, 1)
    with pytest.warns(UserWarning, match=r"train_during_rollout: true` has no effect with HF"):
        trainer.fit(module, tiny_data())
    assert trainer.global_step == 1
    assert "perf/groups_trained_under_rollout" not in trainer.callback_metrics
    assert float(trainer.callback_metrics["train/grad_norm"]) > 0


def test_the_gpu_twins_build_their_modules_on_the_cpu():
    """The GPU twins (tests/rollout/test_vllm_stream_gpu.py) run only in a lease; their modules are built here, so
    a setting the module refuses shows before one (2026-12-07: the by-completion twin's reference run set the unit
    without the overlap and failed on the H100)."""
    from pathlib import Path

    from rl_helpers import load_file

    twins = load_file(Path(__file__).parents[1] / "rollout" / "test_vllm_stream_gpu.py")
    for sm_share, unit in twins.TWINS.values():
        for overlap in (False, True):
            module = twins.twin_module(HF(), overlap, sm_share, unit)
            assert module.train_during_rollout is overlap
            assert module.train_during_rollout_unit == (unit if overlap else "group")
