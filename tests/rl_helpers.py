"""Building blocks of the RL-core tests: a tiny NVFP4 + LoRA policy, Arithmetic prompts, dense test rewards."""
from __future__ import annotations

import math

import lightning as L
import torch

from qerl.rewards.base import Reward

#: the smallest complete recipe: tiny random Qwen2, NVFP4 + LoRA, GRPO, one step of 2 prompts x 2 completions
TINY_RECIPE = {
    "seed_everything": 0,
    "trainer": {"max_steps": 1, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1,
                "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False},
    "model": {
        "policy": {"class_path": "RandomInit", "init_args": {"config": "tiny", "seed": 0}},
        "quantizer": "NVFP4",
        "lora": {"rank": 4, "alpha": 8.0},
        "algorithm": "GRPO",
        "rewards": ["GSM8KAccuracy"],
        "sampling": {"n": 2, "max_new_tokens": 4, "temperature": 1.0},
        "dtype": "float32",
        "micro_batch_size": 4,
    },
    "data": {"class_path": "Arithmetic",
             "init_args": {"digits": 1, "batch_size": 2, "num_train": 8, "num_val": 0, "num_test": 4}},
}


class DigitReward(Reward):
    """Fraction of a completion's characters that are digits: a dense signal even a random tiny model varies on."""

    def __call__(self, completions: list[str], answers: list[str], **meta) -> list[float]:
        return [sum(c.isdigit() for c in text) / max(1, len(text)) for text in completions]


class NaNFirstCalls(Reward):
    """NaN for the first `count` calls, then 1 for the first completion of each group and 0 for the rest."""

    def __init__(self, count: int = 1, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.count, self.calls = count, 0

    def __call__(self, completions: list[str], answers: list[str], **meta) -> list[float]:
        self.calls += 1
        if self.calls <= self.count:
            return [math.nan] * len(completions)
        return [float(i % 2 == 0) for i in range(len(completions))]


class EvenAnswersUniform(Reward):
    """0 for every completion of a prompt whose gold answer is even (a no-signal group); digit fraction otherwise."""

    def __call__(self, completions: list[str], answers: list[str], **meta) -> list[float]:
        return [0.0 if int(a) % 2 == 0 else sum(c.isdigit() for c in t) / max(1, len(t))
                for t, a in zip(completions, answers)]


def load_file(path) -> object:
    """A test file loaded by its path under its own name: its helpers shared without importing it by a package name
    (`rollout` may name benchmarks/rollout.py, which the benchmark tests put on sys.path)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(f"shared_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_whole_batch(results, algorithm, rollout, advantages, whole, expected, params) -> dict:
    """Groups trained apart (`GroupTrainer` / `CompletionTrainer` results) against the whole batch trained at once:
    the advantages, the gradient once scaled by the batch's count, and the loss, entropy and mean ratio; returns the
    combined metrics."""
    import pytest
    import torch

    from qerl.training.group_trainer import check_group_local, combine_updates, normalizer, scale_gradients

    got = torch.cat([res.advantages for res in results])
    check_group_local(algorithm, torch.cat([res.shaped for res in results]), got, rollout.group_size)
    assert torch.allclose(got, advantages)
    tokens = float(rollout.completion_mask.sum())
    scale = normalizer(algorithm, rollout.num_rows, tokens)
    combined = combine_updates([res.update for res in results], scale, tokens)
    scale_gradients(params, scale)
    for p, want in zip(params, expected):
        assert torch.allclose(p.grad, want, atol=1e-6, rtol=1e-4)
    assert combined.metrics["loss"] == pytest.approx(whole.metrics["loss"], abs=1e-6)
    assert combined.metrics["entropy"] == pytest.approx(whole.metrics["entropy"], rel=1e-5)
    assert combined.metrics["ratio_mean"] == pytest.approx(whole.metrics["ratio_mean"], rel=1e-6)
    return combined.metrics


def split_request_outputs(backend, prompt_ids, sampling) -> list:
    """A `VLLM` backend's `request_outputs` with one request per completion (`stream_requests(split=True)`): what a
    non-streamed run must sample to compare with training by completion (`generate_pieces` splits the same way)."""
    prompts, params, owners = backend.stream_requests(prompt_ids, sampling, split=True)
    flat = backend.llm.generate(prompts, params, lora_request=backend.lora_request(), use_tqdm=False)
    return [backend.merge_outputs([o for o, g in zip(flat, owners) if g == i]) for i in range(len(prompt_ids))]


def tiny_module(**overrides):
    """A QeRLModule on the tiny random Qwen2 (NVFP4 + LoRA r4 + AQN + GRPO, 4 completions of <= 6 tokens)."""
    from qerl.algorithms import GRPO
    from qerl.models import RandomInit
    from qerl.module import QeRLModule
    from qerl.noise import Exponential
    from qerl.quantizers import NVFP4
    from qerl.training.settings import LoRASettings, OptimizerSettings
    from qerl.types import SamplingConfig

    args = {
        "policy": RandomInit("tiny", seed=0), "algorithm": GRPO(), "rewards": [DigitReward()], "quantizer": NVFP4(),
        "lora": LoRASettings(rank=4, alpha=8.0), "noise": Exponential(sigma_start=1e-2, sigma_end=1e-3, num_stages=3),
        "sampling": SamplingConfig(n=4, max_new_tokens=6, temperature=1.0),
        "optimizer": OptimizerSettings(lr=5e-3, warmup_steps=2), "dtype": "float32", "micro_batch_size": 4, "seed": 0,
        "log_samples_every": 1,
    }
    args.update(overrides)
    return QeRLModule(**args)


def tiny_data(**overrides):
    from qerl.data import Arithmetic

    args = {"batch_size": 2, "num_train": 24, "num_test": 4, "val_size": 0, "seed": 0}
    args.update(overrides)
    return Arithmetic(**args)


class MetricsRecorder(L.Callback):
    """Keeps a copy of the logged scalars after every training batch."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def tiny_trainer(root, max_steps: int, callbacks=(), **kwargs) -> L.Trainer:
    from lightning.pytorch.loggers import TensorBoardLogger

    args = {"max_steps": max_steps, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1, "enable_progress_bar": False,
                "enable_model_summary": False, "enable_checkpointing": False, "logger": TensorBoardLogger(str(root), name="run"),
                "callbacks": list(callbacks), "num_sanity_val_steps": 0}
    args.update(kwargs)
    return L.Trainer(**args)


def lora_state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.named_parameters() if v.requires_grad}


#: a 2-step tiny `qerl fit` recipe with a checkpoint every step: {path}, {logger} + {init_args}, {noise} (a model
#: line, or ""), {samples} (log_samples_every); textwrap.dedent it after format
RESUME_RECIPE = """\
# qerl fit --config {path}
seed_everything: 0
trainer:
  max_steps: 2
  accelerator: cpu
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: {logger}
    init_args: {init_args}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{every_n_train_steps: 1, save_last: true}}
model:
  policy: {{class_path: RandomInit, init_args: {{config: tiny}}}}
  quantizer: NVFP4
  lora: {{rank: 4, alpha: 8}}{noise}
  algorithm: GRPO
  rewards:
    - GSM8KAccuracy
  sampling: {{n: 2, max_new_tokens: 4}}
  dtype: float32
  log_samples_every: {samples}
  num_samples_logged: 1
data:
  class_path: Arithmetic
  init_args: {{batch_size: 2, num_train: 16, num_test: 4, val_size: 0}}
"""
