"""SampleLogger: a few prompts, completions and rewards written as text to TensorBoard every N steps."""
from __future__ import annotations

from typing import Any

import lightning as L


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


class SampleLogger(L.Callback):
    """Every `every_n_steps` optimizer steps writes `pl_module.last_samples` to TensorBoard as `samples/text`.

    The module fills `last_samples` (a list of dicts with prompt, completion, answer, reward, scores)
    in each training step; loggers without `add_text` (not TensorBoard) are skipped.
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
        text = format_samples(samples)
        for logger in trainer.loggers:
            add_text = getattr(getattr(logger, "experiment", None), "add_text", None)
            if callable(add_text):
                add_text("samples/text", text, global_step=step)
                self.written += 1
