"""`rollout: VLLM` under `strategy: ddp` on CPUs: an engine per rank (vLLM's external_launcher on gloo), and the
2-rank run trains exactly like one process with twice the prompts (vLLM seeds every prompt's samples)."""
from __future__ import annotations

import pytest
from ddp_launch import launch

pytestmark = pytest.mark.slow  # two real vLLM CPU engines and one more for the one-process run


def test_an_engine_per_rank_matches_one_process_with_twice_the_prompts(tmp_path):
    pytest.importorskip("vllm")
    one = launch(tmp_path / "one", "--devices", "1", "--batches-per-step", "2", "--max-steps", "2", "--rollout", "vllm")
    two = launch(tmp_path / "two", "--devices", "2", "--max-steps", "2", "--rollout", "vllm")
    assert "Using external launcher" in two["log"]  # engines inside the training processes
    for a, b in zip(one["metrics"], two["metrics"]):
        for key in ("train/loss", "train/grad_norm", "train/entropy", "reward/total_mean", "rollout/length_mean"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), key
    assert all(s["train/grad_norm"] > 1e-3 for s in one["metrics"])
    for a, b in zip(one["grads"], two["grads"]):
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
