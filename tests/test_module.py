"""QeRLModule end to end on a tiny NVFP4 + LoRA policy: metrics, KL reference, iterations, DAPO refill, NaN, bad input."""
from __future__ import annotations

import math
import os

import pytest
import torch
from rl_helpers import (
    DigitReward,
    EvenAnswersUniform,
    MetricsRecorder,
    NaNFirstCalls,
    lora_state,
    tiny_data,
    tiny_module,
    tiny_trainer,
)

from qerl.algorithms import DAPO, GRPO
from qerl.rollout import HF
from qerl.training.checks import RecipeError
from qerl.training.settings import LoRASettings
from qerl.types import SamplingConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


REQUIRED = [
    "train/loss", "reward/DigitReward", "reward/total_mean", "reward/total_std", "train/accuracy",
    "rollout/length_mean", "rollout/length_max", "rollout/truncated_frac", "train/entropy", "train/clip_frac",
    "train/grad_norm", "noise/sigma", "rollout/tokens_per_s", "perf/step_s", "perf/rollout_s", "perf/score_s",
    "perf/train_s", "perf/peak_mem", "reward/running_mean", "train/accuracy_running", "data/groups_kept_frac",
    "data/fallback_frac",
]


def fit(tmp_path, module, steps, data=None, **trainer_kwargs):
    recorder = MetricsRecorder()
    trainer = tiny_trainer(tmp_path, steps, callbacks=[recorder], **trainer_kwargs)
    trainer.fit(module, data or tiny_data())
    return trainer, recorder.steps


def test_two_steps_log_every_metric_train_lora_and_export_the_adapter(tmp_path):
    module = tiny_module()
    trainer, steps = fit(tmp_path, module, 3)
    assert trainer.global_step == 3 and len(steps) == 3
    missing = [k for k in REQUIRED if k not in steps[-1]]
    assert not missing, missing
    last = steps[-1]
    assert 0 <= last["train/accuracy"] <= 1 and last["rollout/length_max"] <= 6
    assert last["noise/sigma"] > 0  # 3 stages over 3 steps: the last step is noisy
    lora_b = [v for k, v in lora_state(module).items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero; training moved it
    final = os.path.join(trainer.log_dir, "adapter", "final")
    assert os.path.isfile(os.path.join(final, "adapter_config.json"))
    assert os.path.isfile(os.path.join(final, "adapter_model.safetensors"))
    sampler = next(c for c in trainer.callbacks if type(c).__name__ == "SampleLogger")
    assert sampler.written == 3 and module.last_samples and "completion" in module.last_samples[0]


def test_kl_to_the_adapter_free_reference_is_zero_until_the_first_update(tmp_path):
    module = tiny_module(algorithm=GRPO(beta=0.1), noise=None)
    _, steps = fit(tmp_path, module, 2)
    assert steps[0]["train/kl"] == 0.0  # LoRA B = 0: policy == base with adapters disabled
    assert steps[1]["train/kl"] > 0.0


def test_two_iterations_take_two_optimizer_steps_on_one_rollout(tmp_path):
    module = tiny_module(algorithm=GRPO(num_iterations=2), noise=None)
    trainer, steps = fit(tmp_path, module, 2)
    assert trainer.global_step == 2 and len(steps) == 1  # one rollout batch, two updates
    assert steps[0]["train/ratio_mean"] != 1.0  # the 2nd update sees the ratio to the stored old log-probs


def test_dapo_drops_no_signal_groups_and_refills_from_new_prompts(tmp_path):
    module = tiny_module(algorithm=DAPO(max_resample_rounds=3), rewards=[EvenAnswersUniform()], noise=None)
    data = tiny_data(batch_size=2, num_train=40)
    _, steps = fit(tmp_path, module, 3, data=data)
    assert sum(s["data/refill_rounds"] for s in steps) >= 1
    assert all(s["data/groups_kept_frac"] < 1.0 for s in steps if s["data/refill_rounds"] > 0)
    assert module._batches_drawn == 3 + sum(int(s["data/refill_rounds"]) for s in steps)


class OddAnswersSpread(EvenAnswersUniform):
    """A prompt with an odd gold answer has signal (its first completion scores 1, the rest 0); even: all 0.

    Records how many prompts of each scored batch had signal, so a test knows which groups DAPO kept.
    """

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        self.group_size, self.with_signal = group_size, []

    def __call__(self, completions: list[str], answers: list[str], **meta) -> list[float]:
        self.with_signal.append(sum(int(a) % 2 for a in answers[::self.group_size]))
        return [float(int(a) % 2 == 1 and i % self.group_size == 0) for i, a in enumerate(answers)]


def test_groups_kept_frac_counts_only_groups_with_a_reward_spread(tmp_path):
    """2 prompts a step, up to 3 refills: kept = min(2, prompts with signal) of the 2 x (refills + 1) seen; a
    step that found none trains on its last rollout and counts 0 kept, data/fallback_frac 1."""
    reward = OddAnswersSpread()
    module = tiny_module(algorithm=DAPO(max_resample_rounds=3), rewards=[reward], noise=None)
    _, steps = fit(tmp_path, module, 6, data=tiny_data(batch_size=2, num_train=60))
    calls = iter(reward.with_signal)
    expected = []
    for s in steps:
        found = sum(next(calls) for _ in range(int(s["data/refill_rounds"]) + 1))
        expected.append((min(2, found) / (2 * (s["data/refill_rounds"] + 1)), float(found == 0)))
    assert [(round(s["data/groups_kept_frac"], 6), s["data/fallback_frac"]) for s in steps] == [
        (round(kept, 6), fallback) for kept, fallback in expected]
    assert any(0 < kept < 1 for kept, _ in expected)  # some steps dropped groups and refilled
    assert next(calls, None) is None  # every scored batch belongs to a step


class ZeroReward(EvenAnswersUniform):
    """Every completion scores 0, as with random weights: no group ever carries signal."""

    def __call__(self, completions: list[str], answers: list[str], **meta) -> list[float]:
        return [0.0] * len(completions)


class RecordingHF(HF):
    """The HF backend, keeping every rollout it generates."""

    def __init__(self) -> None:
        super().__init__()
        self.rollouts = []

    def generate(self, prompt_ids, sampling):
        self.rollouts.append(super().generate(prompt_ids, sampling))
        return self.rollouts[-1]


NO_SIGNAL = r"step {}: DAPO: no group had a reward spread after 2 resample round\(s\) of at most 2; training on the last rollout"


def no_signal_lines(seen) -> list[str]:
    return [str(w.message) for w in seen if "no group had a reward spread" in str(w.message)]


def test_dapo_with_no_signal_anywhere_resamples_then_trains_on_the_last_rollout_and_says_so(tmp_path):
    """Every completion runs to the 6-token cap: the overlong penalty is the same for all, so |A| = 0."""
    module = tiny_module(algorithm=DAPO(max_resample_rounds=2), rewards=[ZeroReward()], noise=None)
    with pytest.warns(UserWarning, match=NO_SIGNAL.format(0)) as seen:
        trainer, steps = fit(tmp_path, module, 2, data=tiny_data(batch_size=2, num_train=40))
    assert trainer.global_step == 2 and len(steps) == 2  # no loop, no crash
    assert [s["data/refill_rounds"] for s in steps] == [2.0, 2.0]
    # trained on the last rollout's 2 groups of the 6 generated (3 batches of 2 prompts), none with a spread
    assert [(s["data/groups_kept_frac"], s["data/fallback_frac"]) for s in steps] == [(0.0, 1.0), (0.0, 1.0)]
    assert module._batches_drawn == 2 * 3
    lines = no_signal_lines(seen)
    assert len(lines) == 2 and [line.split(":")[0] for line in lines] == ["step 0", "step 1"]  # one line per step
    assert all(line.endswith("mean |A| = 0 - no update signal") for line in lines)
    assert all(s["train/grad_norm"] == 0.0 for s in steps)  # zero advantages: no update signal


def test_the_fallback_line_gives_the_mean_advantage_that_length_shaping_leaves(tmp_path):
    """Completions stopped at random lengths (stop string U+FFFD) inside a 5-token overlong buffer: the penalty
    differs within a group, so the fallback rollout trains with non-zero advantages and the line says how large."""
    backend, algorithm = RecordingHF(), DAPO(max_resample_rounds=2, overlong_buffer=5)
    sampling = SamplingConfig(n=4, max_new_tokens=6, temperature=1.0, stop=["\ufffd"])
    module = tiny_module(algorithm=algorithm, rewards=[ZeroReward()], noise=None, rollout=backend, sampling=sampling)
    with pytest.warns(UserWarning, match=NO_SIGNAL.format(0)) as seen:
        _, steps = fit(tmp_path, module, 2, data=tiny_data(batch_size=2, num_train=40))
    assert len(backend.rollouts) == 2 * 3
    measured = []
    for last in backend.rollouts[2::3]:  # each step's third rollout is the one it trains on
        shaped = algorithm.shape_rewards(torch.zeros(last.num_rows), last.lengths, 6)
        measured.append(float(algorithm.advantages(shaped, 4).abs().mean()))
    assert all(m > 0.1 for m in measured)
    lines = no_signal_lines(seen)
    assert len(lines) == 2
    assert [line.split(":")[0] for line in lines] == ["step 0", "step 1"]
    assert [line.rsplit("mean |A| = ", 1)[1] for line in lines] == [f"{m:.4g}" for m in measured]
    assert all("from reward shaping only (DAPO: the overlong length penalty)" in line for line in lines)
    assert [(s["data/groups_kept_frac"], s["data/fallback_frac"]) for s in steps] == [(0.0, 1.0), (0.0, 1.0)]
    assert all(s["train/grad_norm"] > 0 for s in steps)  # the shaping alone moves the adapter


class NaNLossOnce(GRPO):
    """GRPO whose first loss is NaN (as from an overflow in the forward)."""

    calls = 0

    def loss(self, logprobs, *args, **kwargs):
        self.calls += 1
        out = super().loss(logprobs, *args, **kwargs)
        if self.calls == 1:
            out.loss = out.loss * math.nan
        return out


def test_nan_loss_skips_the_step_and_training_goes_on(tmp_path):
    module = tiny_module(algorithm=NaNLossOnce(), noise=None)
    trainer, steps = fit(tmp_path, module, 2)
    assert steps[0]["train/nan_skipped"] == 1.0 and math.isnan(steps[0]["train/loss"])
    assert len(steps) == 3 and trainer.global_step == 2 and steps[-1]["train/nan_skipped"] == 0.0
    assert all(torch.isfinite(v).all() for v in lora_state(module).values())


def test_nan_rewards_skip_the_step_too(tmp_path):
    module = tiny_module(rewards=[NaNFirstCalls(count=1)], noise=None)
    trainer, steps = fit(tmp_path, module, 1)
    assert steps[0]["train/nan_skipped"] == 1.0 and steps[0]["train/nonfinite_reward"] == 1.0
    assert len(steps) == 2 and trainer.global_step == 1


def test_a_run_that_keeps_diverging_stops_with_a_message(tmp_path):
    module = tiny_module(rewards=[NaNFirstCalls(count=100)], noise=None, max_nan_skips=1)
    with pytest.raises(RuntimeError, match="max_nan_skips"):
        fit(tmp_path, module, 2)


@pytest.mark.parametrize("algorithm", [GRPO(), DAPO()], ids=["GRPO", "DAPO"])
def test_group_size_one_is_refused_naming_the_key(algorithm):
    with pytest.raises(RecipeError, match=r"sampling\.n"):
        tiny_module(algorithm=algorithm, sampling=SamplingConfig(n=1, max_new_tokens=4))


@pytest.mark.parametrize("overrides, key", [
    ({"lora": None}, "lora"),
    ({"rewards": []}, "rewards"),
    ({"accuracy_reward": "Nope"}, "accuracy_reward"),
    ({"micro_batch_size": 0}, "micro_batch_size"),
    ({"sampling": SamplingConfig(n=4, top_p=0.0)}, "sampling.top_p"),
])
def test_incompatible_settings_are_refused_naming_the_key(overrides, key):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        tiny_module(**overrides)


def test_a_lora_target_matching_no_module_fails_at_start_up(tmp_path):
    module = tiny_module(lora=LoRASettings(rank=4, targets=["q_proj", "attn_qkv"]))
    with pytest.raises(RecipeError, match=r"lora\.targets.*attn_qkv"):
        fit(tmp_path, module, 1)


def test_accuracy_reward_picks_which_reward_counts_as_correct(tmp_path):
    module = tiny_module(rewards=[DigitReward(), NaNFirstCalls(count=0)], accuracy_reward="NaNFirstCalls",
                         noise=None)
    _, steps = fit(tmp_path, module, 1)
    assert steps[0]["train/accuracy"] == 0.5  # NaNFirstCalls scores every other completion 1


class CountingHF(HF):
    """The HF backend, counting weight syncs (an engine with its own weights would copy LoRA here)."""

    def __init__(self) -> None:
        super().__init__()
        self.synced_steps: list[int] = []

    def sync_weights(self, policy) -> None:
        self.synced_steps.append(sum(float(p.detach().abs().sum()) for n, p in policy.named_parameters() if "lora_B" in n))


def test_rollout_engine_is_synced_at_start_and_after_every_optimizer_step(tmp_path):
    backend = CountingHF()
    module = tiny_module(rollout=backend, noise=None)
    fit(tmp_path, module, 2)
    assert len(backend.synced_steps) == 3  # fit start, then after steps 1 and 2
    assert backend.synced_steps[0] == 0.0 and backend.synced_steps[-1] > 0.0  # it saw the updated LoRA weights


def test_the_rollout_seed_follows_seed_everything_unless_the_recipe_sets_one(monkeypatch):
    """A seed sweep (`--seed_everything 0/1/2`) must draw different rollouts and AQN noise, not only a different
    LoRA init: in the H200 AQN study of 2026-12-02 the three "seeds" of each NVFP4 variant sampled identical
    completions until the first reward arrived (model.seed stayed 0)."""
    import lightning as L

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # first: the env var is put back as it was afterwards
    assert tiny_module(seed=None).seed == 0
    L.seed_everything(3)
    assert tiny_module(seed=None).seed == 3
    assert tiny_module(seed=7).seed == 7


def test_a_resumed_run_keeps_the_rollout_seed_of_its_checkpoint(monkeypatch):
    """Without `seed_everything` in the recipe Lightning draws a new seed per launch; the resumed run must still
    sample with the seed the checkpointed run used, or the resume would not be exact."""
    import lightning as L

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    L.seed_everything(123)
    module = tiny_module(seed=None)
    module.on_load_checkpoint({"qerl": {"seed": 11, "nan_streak": 0}})
    assert module.seed == 11
    module.on_load_checkpoint({"qerl": {}})  # a checkpoint written before the seed was saved: kept as is
    assert module.seed == 11
