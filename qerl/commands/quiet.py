"""Library warnings that tell a qerl user nothing are hidden (`QERL_DEBUG=1` shows everything).

Each entry names a message qerl makes true or false on purpose: the `dataloader_iter` training step,
checkpoints of a manually optimized module, a resume whose data position qerl restores itself,
an empty validation list when no rows are held out, a torch deprecation inside Lightning, and
Lightning's advertising tips. Anything not listed here still shows.
"""
from __future__ import annotations

import logging
import os
import warnings

#: regexes (matched at the start of the message) of warnings hidden by default, with why
HIDDEN_WARNINGS = {
    r"You are using the `dataloader_iter` step flavor": "qerl's training step draws prompt batches itself",
    r"Found `dataloader_iter` argument in the `training_step`": "same",
    r"Using ModelCheckpoint with manual optimization": "qerl's checkpoints hold the state after the step, on purpose",
    r"You're resuming from a checkpoint that ended before the epoch ended":
        "qerl restores the data position and RNG itself (qerl.training.resume): the resume is exact",
    r"Total length of `\w+` across ranks is zero": "no validation rows held out means no validation",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated": "inside Lightning, nothing for a user to change",
    r"The '\w+_dataloader' does not have many workers": "prompts are a few strings: workers would only cost",
    r"Could not find a config file in .* - will assume that the vocabulary was not modified":
        "peft, saving an adapter of a GGUF model (no config.json): qerl's LoRA never changes the vocabulary",
}
#: log lines (their start) of libraries that are advertisements, not information
HIDDEN_LOG_LINES = ("💡 Tip:",)
_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
            "lightning.fabric.utilities.rank_zero")
_installed = False


def debug_mode() -> bool:
    """`QERL_DEBUG=1`: tracebacks and every library warning."""
    return os.environ.get("QERL_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(HIDDEN_LOG_LINES)


def quiet_library_output() -> None:
    """Install the filters above once per process (nothing under `QERL_DEBUG=1`)."""
    global _installed
    if _installed or debug_mode():
        return
    _installed = True
    for pattern in HIDDEN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in _LOGGERS:
        logging.getLogger(name).addFilter(_DropAdverts())


def hide_warning(pattern: str) -> None:
    """Hide one more warning for this process (e.g. a non-empty checkpoint folder when a run is resumed)."""
    if not debug_mode():
        warnings.filterwarnings("ignore", message=pattern)
