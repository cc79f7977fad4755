"""Checkpoint files that survive `kill -9`: atomic writes beside the target, orphan clean-up, and a safe check.

Lightning's default writer stages a checkpoint in `TMPDIR` and moves it into place; across filesystems the
move is a copy, so a kill during it leaves a truncated `last.ckpt`. `AtomicCheckpointIO` writes a temp file
in the checkpoint's own folder, fsyncs it, renames it over the target (atomic on one filesystem) and fsyncs
the folder: a reader sees the old file or the complete new one, never a part.
"""
from __future__ import annotations

import glob
import os
import pickle
import tempfile
import zipfile
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

#: temp files are `.<target name>.<pid>.<random>.partial` in the target's folder
PARTIAL_SUFFIX = ".partial"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong with it."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_folder(folder: str) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(obj: Any, path: str) -> None:
    """`torch.save(obj)` to `path` through a fsynced temp file beside it and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=PARTIAL_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise
    fsync_folder(folder)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(folder: str) -> list[str]:
    """Delete temp files that a killed writer left in `folder` (not those of a process still running)."""
    removed = []
    for temp in glob.glob(os.path.join(glob.escape(folder), f".*{PARTIAL_SUFFIX}")):
        parts = os.path.basename(temp).split(".")
        pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue
        try:
            os.remove(temp)
            removed.append(temp)
        except FileNotFoundError:
            pass
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO` with local files written atomically on their own filesystem."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        target = os.fspath(path)
        if "://" in target and not target.startswith("file://"):  # object stores: Lightning's own fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}.")
        write_atomically(checkpoint, target.removeprefix("file://"))


def read_checkpoint(path: str) -> dict[str, Any]:
    """Load a Lightning checkpoint safely (tensors and plain types only); `CheckpointError` says what is wrong."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path}: no such file.")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder; give a .ckpt file.")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the write that made it was interrupted.")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is damaged ({size:,} bytes, truncated or not a PyTorch checkpoint "
                              "file).")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain values, which qerl "
                              "does not load: it was not written by a qerl run.") from None
    except Exception as exc:  # noqa: BLE001 - zip/pickle/EOF errors of a damaged file all mean the same to a user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is damaged ({size:,} bytes; {first[:120]}).") from None
    if not isinstance(data, dict) or "global_step" not in data or "state_dict" not in data:
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no 'global_step' / 'state_dict').")
    return data


def use_atomic_checkpoints(trainer) -> None:
    """Give `trainer` the atomic writer unless a recipe chose its own CheckpointIO plugin."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
