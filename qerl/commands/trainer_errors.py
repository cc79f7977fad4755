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


#: Lightning's names for full float32 precision, the one qerl runs under (it sets the dtypes itself)
FULL_PRECISION = {"32-true", "32", "64-true"}


def precision_error(precision: Any, asked: Any = None) -> str | None:
    """The message for a trainer whose `precision` (as Lightning resolved it) is not full precision, naming what the
    recipe `asked` for when given; None for full precision.

    qerl chooses every dtype itself: `model.dtype` for the dense parts, float32 for the log-probs the update compares
    and for the norm weights AQN perturbs. Lightning's plugins would change that behind it: `*-mixed`
    autocasts the whole step (rollout and update, in bf16/fp16 whatever `model.dtype` says), `*-true` casts the
    module's floating parameters, AQN's float32 norms included, so the noise would round away (issue #20)."""
    if str(precision) in FULL_PRECISION:
        return None
    name = str(asked if asked is not None else precision)
    dtype = "float16" if name.startswith("16") else "bfloat16"
    return (f"trainer.precision: {name} is not used by qerl: it sets the dtypes itself with model.dtype (the dense "
            "parts; log-probs and AQN's norm weights stay float32), and Lightning's precision plugin would "
            f"autocast or cast over them. Remove trainer.precision and set model.dtype instead (--model.dtype {dtype}).")
