"""`--aqn` of benchmarks/step.py: a recipe's AQN noise, applied to the row's step the way `qerl fit` applies it.

    PYTHONPATH=. python benchmarks/step.py --rows 7b:nvfp4:8:512:1 --rollout vllm --vllm-no-compile --aqn

What `qerl fit` does when a recipe sets `model.noise`, and what a row with `--aqn` does with the same code:

- the schedule is the recipe's `model.noise`, parsed by the real CLI (`qerl.lightning_cli.parse_recipe`) and built
  from its `class_path`/`init_args` (default recipe: recipes/qwen2.5-7b/grpo-nvfp4-gsm8k.yaml, `Exponential`
  1e-2 -> 5e-4 over 10 stages); `--aqn-relative` sets the schedule's `relative: true`;
- the targeted norms are kept in float32 (`keep_norms_float32`, as `qerl.training.policy.build_policy(noise=True)`),
  before the rollout engine is built, so a vLLM engine takes float32 norms too;
- every step, `NoiseCallback` (the callback `QeRLModule.configure_callbacks` adds) computes sigma at the step for the
  recipe's `trainer.max_steps` and the recipe's seed, logs `noise/sigma` and publishes the step's `NoiseDraw`;
- generation runs inside the backend's `noise(sigma, seed, relative)` block (as `qerl.training.collect` does): the
  policy's norms and, for `VLLM`, the engine's own RMSNorm weights (by `copy_`), restored bit-exactly after it;
  `noise/realized_sigma`, `noise/moved_fraction`, `noise/row_sigma` are the backend's measurement, as the module logs;
- the training forward runs without noise (`qerl fit`'s `NoiseCallback` never sets `apply_in_training`).

Step 0 of a staged schedule is noise-free, so the row's steps are taken from the schedule's first noisy step on
(step 50 of 500 for the default: sigma 1e-2), or from `--aqn-step`. The cost does not depend on sigma (> 0).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import time
from collections.abc import Iterator
from types import SimpleNamespace

import torch

from qerl.noise.base import NoiseDraw, NoiseSchedule
from qerl.noise.precision import RealizedNoise

DEFAULT_RECIPE = "recipes/qwen2.5-7b/grpo-nvfp4-gsm8k.yaml"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def recipe_noise(path: str) -> tuple[NoiseSchedule, int, int]:
    """(schedule, trainer.max_steps, seed) of the recipe at `path`, parsed as `qerl fit` parses it."""
    from qerl.lightning_cli import parse_recipe

    config = parse_recipe(path if os.path.exists(path) else os.path.join(ROOT, path))
    noise = config.model.noise
    if noise is None:
        raise SystemExit(f"--aqn {path}: the recipe sets no `model.noise`; name a recipe with an AQN schedule "
                         f"(e.g. {DEFAULT_RECIPE}).")
    module, _, name = noise.class_path.rpartition(".")
    schedule = getattr(importlib.import_module(module), name)(**noise.init_args.as_dict())
    steps = config.trainer.max_steps
    if not isinstance(steps, int) or steps < 1:
        raise SystemExit(f"--aqn {path}: the recipe's trainer.max_steps is {steps!r}; the schedule needs a run "
                         "length (set trainer.max_steps).")
    seed = config.seed_everything if isinstance(config.seed_everything, int) and \
        not isinstance(config.seed_everything, bool) else 0
    return schedule, steps, seed


class _Module:
    """What `NoiseCallback` touches on a LightningModule: `noise_draw` and `log`."""

    def __init__(self) -> None:
        self.noise_draw = NoiseDraw()
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, **_) -> None:
        self.logged[name] = float(value)


class StepNoise:
    """A row's AQN: `NoiseCallback` run on the row's steps, and the backend's noise block around generation.

    Args:
        recipe: the recipe whose `model.noise`, `trainer.max_steps` and `seed_everything` are used.
        relative: force the schedule's `relative` on (else the recipe's).
        first_step: the global step of the row's first step; None: the schedule's first step with sigma > 0.
    """

    def __init__(self, recipe: str = DEFAULT_RECIPE, relative: bool = False, first_step: int | None = None) -> None:
        from qerl.callbacks.noise import NoiseCallback  # Lightning: imported only when a row runs with AQN

        schedule, self.total_steps, seed = recipe_noise(recipe)
        if relative:
            schedule = dataclasses.replace(schedule, relative=True)
        self.recipe, self.schedule = recipe, schedule
        self.callback = NoiseCallback(schedule, seed=seed)  # as QeRLModule.configure_callbacks builds it
        if first_step is None:
            first_step = next((s for s in range(self.total_steps) if schedule.sigma_at(s, self.total_steps) > 0), 0)
        self.first_step = int(first_step)
        self.module = _Module()

    @property
    def draw(self) -> NoiseDraw:
        return self.module.noise_draw

    def begin_step(self, index: int) -> NoiseDraw:
        """`NoiseCallback.on_train_batch_start` for the row's step `index` (global step first_step + index)."""
        trainer = SimpleNamespace(global_step=self.first_step + index, max_steps=self.total_steps,
                                  estimated_stepping_batches=self.total_steps)
        self.callback.on_train_batch_start(trainer, self.module, None, index)
        return self.draw

    @contextlib.contextmanager
    def generating(self, backend, phases: dict[str, float]) -> Iterator[None]:
        """The backend's `noise` block of this step's draw around one generation (`qerl.training.collect`); the
        seconds spent applying and restoring it are added to `phases["aqn"]`."""
        draw = self.draw
        if draw.sigma <= 0:
            yield
            return
        with contextlib.ExitStack() as stack:
            start = time.perf_counter()
            stack.enter_context(backend.noise(draw.sigma, draw.seed, draw.relative))
            _sync()
            applied = time.perf_counter() - start
            try:
                yield
            finally:
                start = time.perf_counter()
                stack.close()
                _sync()
                phases["aqn"] = phases.get("aqn", 0.0) + applied + time.perf_counter() - start

    def metrics(self, backend) -> dict[str, float]:
        """`noise/sigma` as the callback logged it, and the realized noise as `QeRLModule` logs it (0 at sigma 0)."""
        realized = dict.fromkeys(RealizedNoise.TAGS, 0.0) if self.draw.sigma <= 0 else backend.noise_metrics
        return {**self.module.logged, **{k: float(v) for k, v in realized.items()}}

    def describe(self) -> dict:
        """The row's record of the schedule (steps and metrics are added per step by step.py)."""
        return {"on": True, "recipe": self.recipe, "schedule": repr(self.schedule), "relative": self.schedule.relative,
                "total_steps": self.total_steps, "seed": self.callback.seed, "first_step": self.first_step,
                "in_training": self.callback.apply_in_training}


def targeted_snapshot(policy) -> torch.Tensor:
    """The targeted norm weights end to end (a copy), to check after the step that the noise was restored."""
    from qerl.noise.targets import targeted_norms

    return torch.cat([w.detach().flatten().to(torch.float64) for ws in targeted_norms(policy).values() for w in ws])
