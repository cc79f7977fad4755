"""Checkpoint files that survive `kill -9`: atomic writes beside the target, orphan clean-up, and a safe check.

Lightning's default writer stages a checkpoint in `TMPDIR` and moves it into place; across filesystems the
move is a copy, so a kill during it leaves a truncated `last.ckpt`. `AtomicCheckpointIO` writes a temp file
in the checkpoint's own folder, fsyncs it, renames it over the target (atomic on one filesystem) and fsyncs
the folder: a reader sees the old file or the complete new one, never a part. A write that fails (a full disk, a
folder turned read-only) leaves nothing behind and raises `CheckpointWriteError`: one line naming the file, the
space it needed and the earlier checkpoint that is still intact.
"""
from __future__ import annotations

import errno
import glob
import io
import os
import pickle
import shutil
import tempfile
import zipfile
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

#: temp files are `.<target name>.<pid>.<random>.partial` in the target's folder
PARTIAL_SUFFIX = ".partial"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong with it."""


class CheckpointWriteError(OSError):
    """A checkpoint that was not written; the message names it, why, the space it needed and what is intact."""


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
    """`torch.save(obj)` to `path` through a fsynced temp file beside it and a rename.

    Raises `CheckpointWriteError` when the filesystem refuses the write (`path` keeps its earlier content).
    """
    try:
        _write_atomically(obj, path)
    except Exception as exc:  # torch.save wraps the OSError of a full disk in a RuntimeError
        cause = os_error_in(exc)
        if cause is None:
            raise
        raise write_failure(path, obj, cause) from exc


def _write_atomically(obj: Any, path: str) -> None:
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


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError (with an errno) behind `exc`, following its cause/context chain; None when there is none."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class _ByteCounter(io.RawIOBase):
    """A write-only sink that only counts: how many bytes `torch.save` would have written."""

    def __init__(self) -> None:
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        self.count += size
        return size


def serialized_size(obj: Any) -> int | None:
    """Bytes of `torch.save(obj)` (measured into a counting sink, nothing written); None if it cannot be measured."""
    sink = _ByteCounter()
    try:
        torch.save(obj, sink)
    except Exception:  # noqa: BLE001 - only for the message of a failed write
        return None
    return sink.count


def _megabytes(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB" if size >= 2**30 else f"{size / 2**20:,.1f} MiB"


def _free_bytes(folder: str) -> int | None:
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def newest_readable(folder: str) -> tuple[str, int] | None:
    """(path, step) of the newest `*.ckpt` in `folder` that loads, or None."""
    try:
        names = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".ckpt")]
    except OSError:
        return None
    for path in sorted(names, key=os.path.getmtime, reverse=True):
        try:
            return path, int(read_checkpoint(path)["global_step"])
        except CheckpointError:
            continue
    return None


def write_failure(path: str, obj: Any, error: OSError) -> CheckpointWriteError:
    """The one-line error for a checkpoint `path` the filesystem refused: why, space needed and free, what is intact."""
    folder = os.path.dirname(os.path.abspath(path))
    needed, free = serialized_size(obj), _free_bytes(folder)
    space = f"it needs {_megabytes(needed)}" if needed is not None else "its size is unknown"
    if free is not None:
        space += f", {_megabytes(free)} free there"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        why = f"no space left on the device of {folder} ({space})"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = f"{folder} is not writable ({error.strerror}; {space})"
    else:
        why = f"{error.strerror or error} ({space})"
    intact = newest_readable(folder)
    if intact is not None:
        then = (f"the earlier checkpoint {intact[0]} (step {intact[1]}) is intact: free space (or fix the folder) and "
                "resume from it with --ckpt_path last")
    else:
        then = "no earlier checkpoint was written; free space (or fix the folder) and start the run again"
    failure = CheckpointWriteError(f"checkpoint {path} was not written: {why}; {then}.")
    failure.errno = error.errno
    return failure


class AdapterWriteError(OSError):
    """An adapter folder that was not written; the message says why and which checkpoint is intact."""


def adapter_write_failure(path: str, exc: BaseException) -> AdapterWriteError | None:
    """The one-line error for an adapter folder `path` the filesystem refused; None when `exc` is not a filesystem
    error (safetensors reports its own failed writes as `... (os error N)`)."""
    cause, text = os_error_in(exc), str(exc).strip()
    if cause is None and "(os error" not in text:
        return None
    why = cause.strerror if cause is not None and cause.strerror else text.splitlines()[0][:160]
    free = _free_bytes(os.path.dirname(os.path.abspath(path)))
    room = f" ({_megabytes(free)} free there)" if free is not None else ""
    intact = newest_readable(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "checkpoints"))
    then = (f"the checkpoint {intact[0]} (step {intact[1]}) is intact: free space (or fix the folder) and resume from "
            "it with --ckpt_path last" if intact is not None else "free space (or fix the folder) and run again")
    return AdapterWriteError(f"adapter {path} was not written: {why}{room}; {then}.")


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
