"""Fault injection for tests/test_fault_injection.py: callbacks that `kill -9` their own process at a chosen point,
wait for a real signal mid-step, fill the disk at a checkpoint, or make a folder read-only.

Named in a recipe (`class_path: fault_hooks.KillAt`) of a `qerl fit` subprocess whose PYTHONPATH holds tests/.
"""
from __future__ import annotations

import builtins
import errno
import io
import os
import signal
import time

import lightning as L
import torch


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt(L.Callback):
    """SIGKILL after optimizer step `step` or, with `during_save=k`, half-way through the k-th checkpoint file
    written at that step (1: `epoch=..-step=N.ckpt`, 2: `last.ckpt`)."""

    def __init__(self, step: int, during_save: int = 0) -> None:
        self.step, self.during_save, self.saves = step, during_save, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.during_save and trainer.global_step == self.step:
            die()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if not self.during_save or trainer.global_step != self.step:
            return
        self.saves += 1
        if self.saves == self.during_save:
            torch.save = half_then_die(torch.save)


def half_then_die(real_save):
    """A `torch.save` that writes the first half of the file's bytes, syncs them to disk, and is killed."""

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        if hasattr(f, "write"):
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        else:
            with open(f, "wb") as handle:
                handle.write(data[: len(data) // 2])
        die()

    return save


class WaitForSignalAt(L.Callback):
    """At the start of the step after optimizer step `step`: write `marker` (the test then signals this process)
    and wait until `StopOnSignal` has noted the signal, so it arrives in the middle of that step."""

    def __init__(self, step: int, marker: str, timeout_s: float = 300.0) -> None:
        self.step, self.marker, self.timeout_s = step, marker, timeout_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        with open(self.marker, "w") as handle:
            handle.write(str(os.getpid()))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and not any(getattr(c, "received", None) for c in trainer.callbacks):
            time.sleep(0.05)


class LimitedDevice(io.RawIOBase):
    """A file on a device with `free` bytes left: writes past them fail with ENOSPC, as on a full disk."""

    def __init__(self, raw, free: int) -> None:
        self.raw, self.free = raw, free

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if self.free <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        size = min(self.free, len(data))
        written = self.raw.write(data[:size])
        self.free -= written
        return written

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()
        super().close()


def full_disk_fdopen(real_fdopen, free: int):
    """An `os.fdopen` whose files opened for writing hold at most `free` more bytes (a fake full filesystem)."""

    def fdopen(fd, mode="r", *args, **kwargs):
        if "w" not in mode and "a" not in mode:
            return real_fdopen(fd, mode, *args, **kwargs)
        return io.BufferedWriter(LimitedDevice(io.FileIO(fd, "wb"), free))

    return fdopen


class DiskFullAt(L.Callback):
    """From the checkpoint written at optimizer step `step` on, the disk has `free` bytes left."""

    def __init__(self, step: int, free: int = 1024) -> None:
        self.step, self.free, self.full = step, free, False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.global_step == self.step and not self.full:
            self.full = True
            os.fdopen = full_disk_fdopen(os.fdopen, self.free)


def read_only_layer(folder: str) -> None:
    """Make `folder` read-only for this process (a fake filesystem layer, for root, whom chmod does not stop):
    creating, writing or removing anything under it fails with EROFS."""
    root = os.path.realpath(folder)

    def inside(path) -> bool:
        try:
            path = os.path.realpath(os.fspath(path))
        except TypeError:  # a file descriptor
            return False
        return path == root or path.startswith(root + os.sep)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if inside(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open, os.mkdir = guarded_os_open, guarded_mkdir


class ReadOnlyFolder(L.Callback):
    """Named in a recipe: `read_only_layer(folder)` from the moment the run is built (before anything is written)."""

    def __init__(self, folder: str) -> None:
        read_only_layer(folder)
