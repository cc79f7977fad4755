"""SampleLogger: a few prompts, completions and rewards written to every logger every N steps.

Each logger gets them in its own form: TensorBoard as text (`samples/text`), W&B as a `wandb.Table` (`samples`),
CSV as rows of `samples.csv` in the run's version folder (step, sample, reward, answer, prompt, completion,
scores). Other loggers are skipped.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any

import lightning as L

from qerl.training.run_loggers import SAMPLES_CSV

#: columns of the W&B table and of samples.csv
COLUMNS = ("step", "sample", "reward", "answer", "prompt", "completion", "scores")


def format_samples(samples: list[dict[str, Any]]) -> str:
    """Markdown for TensorBoard's text tab: one block per sample."""
    blocks = []
    for i, s in enumerate(samples):
        scores = ", ".join(f"{k}={v:.3g}" for k, v in s.get("scores", {}).items())
        blocks.append(
            f"**sample {i}** (reward {s.get('reward', 0.0):.3g}; {scores}; gold `{s.get('answer', '')}`)\n\n"
            f"prompt:\n\n    {_indent(s.get('prompt', ''))}\n\ncompletion:\n\n    {_indent(s.get('completion', ''))}\n"
        )
    return "\n\n---\n\n".join(blocks)


def _indent(text: str) -> str:
    return str(text).replace("\n", "\n    ")


def sample_rows(samples: list[dict[str, Any]], step: int) -> list[list[Any]]:
    """One row per sample, in `COLUMNS` order (scores as a JSON object)."""
    return [[step, i, float(s.get("reward", 0.0)), str(s.get("answer", "")), str(s.get("prompt", "")),
             str(s.get("completion", "")), json.dumps(s.get("scores", {}), sort_keys=True)]
            for i, s in enumerate(samples)]


def write_tensorboard(logger, samples: list[dict[str, Any]], step: int) -> None:
    logger.experiment.add_text("samples/text", format_samples(samples), global_step=step)


def write_wandb(logger, samples: list[dict[str, Any]], step: int) -> None:
    logger.log_table(key="samples", columns=list(COLUMNS), data=sample_rows(samples, step), step=step)


def write_csv(logger, samples: list[dict[str, Any]], step: int) -> None:
    path = os.path.join(logger.log_dir, SAMPLES_CSV)
    fresh = not os.path.isfile(path)
    os.makedirs(logger.log_dir, exist_ok=True)
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if fresh:
            writer.writerow(COLUMNS)
        writer.writerows(sample_rows(samples, step))


def sample_writer(logger):
    """The function that writes samples to `logger`, None for a logger qerl does not write samples to."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    for kind, write in ((TensorBoardLogger, write_tensorboard), (WandbLogger, write_wandb), (CSVLogger, write_csv)):
        if isinstance(logger, kind):
            return write
    return None


class SampleLogger(L.Callback):
    """Every `every_n_steps` optimizer steps writes `pl_module.last_samples` to each logger (TensorBoard text,
    a W&B table, CSV rows).

    The module fills `last_samples` (a list of dicts with prompt, completion, answer, reward, scores)
    in each training step.
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"SampleLogger: every_n_steps={every_n_steps!r} must be an int >= 1.")
        self.every_n_steps = every_n_steps
        self.written = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        samples = getattr(pl_module, "last_samples", None)
        step = trainer.global_step
        if not samples or (step - 1) % self.every_n_steps != 0 or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            write = sample_writer(logger)
            if write is not None:
                write(logger, samples, step)
                self.written += 1
