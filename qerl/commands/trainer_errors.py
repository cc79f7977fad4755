"""One line for a trainer this machine cannot build (Lightning's `MisconfigurationException`): what the recipe asked
for, what the machine has, and what to change. The common case is a GPU recipe (`trainer.accelerator: gpu`, the
Qwen2.5 recipes) started on a machine without a CUDA device."""
from __future__ import annotations

from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException

GPU_ACCELERATORS = {"gpu", "cuda"}


def trainer_error(exc: BaseException, trainer: Any) -> str | None:
    """The message for `exc` raised while Lightning builds the trainer from `trainer` (the recipe's `trainer:`
    section: a dict or jsonargparse's Namespace, both read with `.get`), or None when `exc` is not a trainer
    misconfiguration."""
    if not isinstance(exc, MisconfigurationException):
        return None
    import torch

    trainer = trainer or {}
    said = str(exc).strip()
    accelerator = str(trainer.get("accelerator", "")).lower()
    if accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        return (f"trainer.accelerator: {accelerator}, but this machine has no CUDA GPU (Lightning: {said}). Run the "
                "recipe on a GPU, or give --trainer.accelerator cpu (a model beyond SmolLM2 is very slow on a CPU; "
                "recipes/quickstart.yaml is the CPU recipe).")
    devices = trainer.get("devices")
    return (f"trainer (accelerator: {accelerator or 'auto'}, devices: {devices}): {said} Change the recipe's "
            "trainer.accelerator / trainer.devices (or override them with --trainer.accelerator, --trainer.devices) "
            "to what this machine has.")
