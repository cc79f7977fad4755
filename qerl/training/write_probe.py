"""Write probe of a run's output folders, before the model loads: a read-only or full output folder is named in one
line at start-up instead of a traceback after minutes of loading.

The probe creates, writes, fsyncs and deletes one small hidden file in the deepest folder of each output path that
exists already, so it creates no folder and leaves nothing behind.
"""
from __future__ import annotations

import errno
import os
import tempfile
from typing import Any

#: bytes the probe writes (one page: a full disk refuses it, where an empty file might still be created)
PROBE_BYTES = 4096


class OutputFolderError(OSError):
    """An output folder of the run that cannot be written; the message names it and what to do."""


def existing_ancestor(folder: str) -> str:
    """`folder` itself if it exists, else the deepest folder above it that does (where it would be created)."""
    path = os.path.abspath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def probe_writable(folder: str, setting: str) -> None:
    """Raise `OutputFolderError` unless a file can be written where `folder` is (or would be created).

    Args:
        folder: the output folder (it need not exist yet).
        setting: the recipe setting that chooses it, named in the message.
    """
    base = existing_ancestor(folder)
    where = f"the run folder {folder}" + (f" (it would be created in {base})" if base != os.path.abspath(folder) else "")
    if not os.path.isdir(base):
        raise OutputFolderError(f"cannot write {where}: {base} is a file, not a folder; choose another {setting}.")
    temp = None
    try:
        fd, temp = tempfile.mkstemp(prefix=".qerl-write-probe.", dir=base)
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"\0" * PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            why = f"no space left on the device of {base}; free some space or choose another {setting}"
        else:
            why = f"{base} is not writable ({exc.strerror or exc}); choose a writable {setting}"
        raise OutputFolderError(f"cannot write {where}: {why}.") from None
    finally:
        if temp is not None and os.path.exists(temp):
            os.remove(temp)


def output_folders(trainer: Any) -> list[tuple[str, str]]:
    """(folder, the setting that chooses it) for each local folder a run writes: its log folder and the
    `dirpath` of each `ModelCheckpoint` that has one (the others write into the log folder)."""
    folders = []
    if trainer.loggers:
        folders.append((trainer.log_dir, "--trainer.logger.init_args.save_dir"))
    else:
        folders.append((trainer.default_root_dir, "--trainer.default_root_dir"))
    for callback in trainer.checkpoint_callbacks:
        dirpath = getattr(callback, "dirpath", None)
        if dirpath:
            folders.append((os.fspath(dirpath), "ModelCheckpoint dirpath"))
    return [(f, s) for f, s in folders if f and "://" not in str(f)]  # object stores are not probed


def check_output_folders(trainer: Any) -> None:
    """`probe_writable` on every folder of `output_folders(trainer)`, on rank 0 (the rank that writes)."""
    if getattr(trainer, "is_global_zero", True):
        for folder, setting in output_folders(trainer):
            probe_writable(str(folder), setting)
