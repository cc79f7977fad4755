"""Whether a checkpoint's weights fit the run that resumes from it, said before they are loaded.

qerl's checkpoints hold only the trainable tensors (the LoRA adapter, `ResumableRun.on_save_checkpoint`), and the
module loads them with `strict_loading = False`: a run resumed with another LoRA rank would stop on torch's
multi-line size-mismatch report, and one resumed with other LoRA targets would silently keep fresh adapters where
the checkpoint has none. `mismatch` names what differs, so the resume stops with one line instead.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn


class CheckpointMismatchError(ValueError):
    """A checkpoint whose trainable tensors do not fit this run's model; the message says which and what to do."""


def _shape(value) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def mismatch(module: nn.Module, state_dict: Mapping[str, object]) -> str | None:
    """What keeps `state_dict` (a checkpoint's) from loading into `module`'s trainable weights, or None when it fits:
    tensors of another shape, trainable weights the checkpoint lacks, tensors the module does not have."""
    own = module.state_dict(keep_vars=True)
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    shapes = [(k, _shape(v), _shape(own[k])) for k, v in state_dict.items() if k in own]
    wrong = [(k, theirs, ours) for k, theirs, ours in shapes if theirs is not None and theirs != ours]
    missing = sorted(trainable - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if not (wrong or missing or unexpected):
        return None
    parts = []
    if wrong:
        k, theirs, ours = wrong[0]
        parts.append(f"{len(wrong)} tensor(s) of another shape (first {k}: checkpoint {theirs}, this run {ours})")
    if missing:
        parts.append(f"{len(missing)} trainable tensor(s) of this run missing from it (first {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) this run does not have (first {unexpected[0]})")
    return "; ".join(parts)


def check_resume(module: nn.Module, checkpoint: Mapping[str, object], path: str | None) -> None:
    """Raise CheckpointMismatchError when `checkpoint` cannot resume `module` (`mismatch`)."""
    said = mismatch(module, checkpoint.get("state_dict", {}))
    if said is not None:
        raise CheckpointMismatchError(
            f"checkpoint {path or '(given)'} does not fit this run's trainable weights: {said}. The LoRA settings "
            "(rank, targets) or the model differ from the run that saved it: resume with the settings it started "
            "with (config.yaml in its run folder), or start a new run without --ckpt_path.")


def base_identity(module) -> dict[str, str | None]:
    """What the adapter was trained on top of: the policy loader with its path or config, and the quantizer."""
    policy, quantizer = getattr(module, "policy", None), getattr(module, "quantizer", None)
    source = getattr(policy, "path", None) or getattr(policy, "config", None)
    return {"policy": f"{type(policy).__name__}({source})" if source is not None else type(policy).__name__,
            "quantizer": type(quantizer).__name__ if quantizer is not None else None}


def warn_other_base(module, saved: Mapping[str, object] | None, path: str | None) -> str | None:
    """Warn (once, one line) when the run resumes an adapter trained on another base or quantizer than its own;
    returns the message, None when they agree or the checkpoint does not say (older checkpoints)."""
    if not saved:
        return None
    ours = base_identity(module)
    differ = [f"{key} {saved.get(key)} -> {ours[key]}" for key in ours if key in saved and saved.get(key) != ours[key]]
    if not differ:
        return None
    message = (f"resuming checkpoint {path or '(given)'} on another base than it was trained on ({'; '.join(differ)}): "
               "the adapter continues on the new base. If that is not meant, resume with the run's config.yaml.")
    warnings.warn(message, stacklevel=2)
    return message
