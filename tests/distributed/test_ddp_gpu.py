"""Data parallelism on 2 GPUs (NCCL): the CPU equivalence on CUDA, and a vLLM engine per rank / per 2 ranks.

Needs a machine with 2 GPUs (and vLLM for the engine tests); skipped elsewhere.
"""
from __future__ import annotations

import pytest
import torch
from ddp_launch import launch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")]


def test_two_gpus_give_the_loss_and_gradients_of_one_gpu_with_twice_the_prompts(tmp_path):
    one = launch(tmp_path / "one", "--accelerator", "gpu", "--devices", "1", "--batches-per-step", "2",
                 "--max-steps", "2")
    two = launch(tmp_path / "two", "--accelerator", "gpu", "--devices", "2", "--max-steps", "2")
    for a, b in zip(one["metrics"], two["metrics"]):
        for key in ("train/loss", "train/grad_norm", "reward/total_mean", "train/entropy"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
    for a, b in zip(one["grads"], two["grads"]):
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5


@pytest.mark.parametrize("tp", [1, 2])
def test_vllm_engines_under_ddp_train_with_global_metrics(tmp_path, tp):
    pytest.importorskip("vllm")
    two = launch(tmp_path / f"tp{tp}", "--accelerator", "gpu", "--devices", "2", "--max-steps", "2",
                 "--rollout", "vllm", "--tp", str(tp))
    assert two["global_step"] == 2 and two["world_size"] == 2
    assert all(s["train/grad_norm"] > 0 for s in two["metrics"])
