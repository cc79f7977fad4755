"""Data parallelism on gloo: 2 ranks x N prompts train exactly like 1 process x 2N, and a killed 2-rank run resumes.

Three real Lightning runs of the tiny NVFP4 + LoRA GRPO policy (`ddp_run.py`), shared by the tests:
one process drawing two batches of 2 prompts per step (`batches_per_step: 2`); 2 ranks (`strategy: ddp`,
2 CPU processes) drawing one batch of 2 prompts each, SIGKILLed at the end of step 3 with the step-2
checkpoint on disk; the same 2 ranks resumed from that checkpoint to step 4. All validate 5 held-out prompts
every 2 steps.
"""
from __future__ import annotations

import pytest
import torch
from ddp_launch import launch

STEPS = 4
COMPARED = ["train/loss", "train/grad_norm", "train/entropy", "train/ratio_mean", "reward/total_mean",
            "reward/total_std", "train/accuracy", "rollout/length_mean", "rollout/length_max",
            "reward/running_mean", "train/accuracy_running", "noise/sigma", "train/lr"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    one = launch(root / "one", "--devices", "1", "--batches-per-step", "2", "--max-steps", str(STEPS),
                 "--val-size", "5")
    killed = launch(root / "two", "--devices", "2", "--max-steps", str(STEPS), "--ckpt-dir", str(root / "ckpt"),
                    "--kill-after", "2", "--val-size", "5", expect_kill=True)
    resumed = launch(root / "resumed", "--devices", "2", "--max-steps", str(STEPS), "--ckpt-dir",
                      str(root / "ckpt"), "--ckpt-path", str(root / "ckpt" / "last.ckpt"), "--val-size", "5")
    ranks = [torch.load(root / "two" / f"grads-rank{r}.pt", weights_only=False) for r in (0, 1)]
    return {"one": one, "killed": killed, "resumed": resumed, "rank_grads": ranks, "ckpt": root / "ckpt"}


def _close(a: dict, b: dict, tol: float = 1e-6) -> float:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= tol, worst
    return worst


def test_two_ranks_give_the_loss_and_gradients_of_one_process_with_twice_the_prompts(runs):
    one, two = runs["one"], runs["killed"]
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert len(two["grads"]) == 3  # steps 1-3 ran before the kill
    for step in range(3):
        for key in COMPARED:
            assert two["metrics"][step][key] == pytest.approx(one["metrics"][step][key], abs=1e-6), (step, key)
        _close(two["grads"][step], one["grads"][step])
    assert all(s["train/grad_norm"] > 1e-3 for s in one["metrics"])  # not a comparison of zero gradients
    assert any(abs(s["reward/total_std"]) > 0 for s in one["metrics"])


def test_every_rank_steps_with_the_same_summed_gradients(runs):
    rank0, rank1 = runs["rank_grads"]
    assert len(rank0) == len(rank1) == 3
    for a, b in zip(rank0, rank1):
        assert _close(a, b, tol=0.0) == 0.0


def test_metrics_are_global_not_rank_zeros(runs):
    """Rank 0 alone saw half of the prompts; its logged reward equals the one-process mean over all of them."""
    one, two = runs["one"], runs["killed"]
    for step in range(3):
        assert two["metrics"][step]["reward/total_mean"] == pytest.approx(one["metrics"][step]["reward/total_mean"],
                                                                          abs=1e-7)
    # the two halves differ somewhere, so a rank-0-only metric would have shown
    assert one["metrics"][0]["reward/total_std"] > 0


def test_a_killed_two_rank_run_resumes_exactly(runs):
    one, resumed = runs["one"], runs["resumed"]
    assert resumed["global_step"] == STEPS and len(resumed["grads"]) == STEPS - 2
    for i, step in enumerate(range(2, STEPS)):
        for key in COMPARED:  # the running means too: the checkpoint keeps each rank's window
            assert resumed["metrics"][i][key] == pytest.approx(one["metrics"][step][key], abs=1e-6), (step, key)
        _close(resumed["grads"][i], one["grads"][step])
    for key in one["lora"]:  # Adam divides by sqrt(v): 1e-8 gradient differences may move a weight by ~1e-7
        assert torch.allclose(resumed["lora"][key], one["lora"][key], atol=1e-5), key


def test_the_checkpoint_keeps_each_ranks_rng(runs):
    state = torch.load(runs["ckpt"] / "epoch=0-step=2.ckpt", weights_only=True)  # written by the killed run
    assert state["global_step"] == 2
    by_rank = state["qerl"]["rng_by_rank"]
    assert len(by_rank) == 2 and all("torch" in s for s in by_rank)


def test_the_memory_plan_and_auto_micro_batch_are_per_rank(runs):
    """One process plans 2 x 2 prompts x 4 completions = 16 rows; each of 2 ranks plans its own 8 (printed once)."""
    one, two = runs["one"]["log"], runs["killed"]["log"]
    assert "micro_batch_size auto -> 16" in one and "rows 16," in one
    assert two.count("micro_batch_size auto -> 8") == 1 and two.count("rows 8,") == 1
    assert "per rank: each of the 2 processes" in two


def test_validation_metrics_cover_every_ranks_held_out_prompts(runs):
    """5 held-out prompts: one process validates all 5; 2 ranks validate 3 each (Lightning pads the shares),
    and the logged val/ metrics are over all 6, not rank 0's 3."""
    one, two = runs["one"]["validation"], runs["killed"]["validation"]
    assert one["val/num_prompts"] == 5
    assert two["val/num_prompts"] == 6
    assert 0.0 <= two["val/accuracy"] <= 1.0
