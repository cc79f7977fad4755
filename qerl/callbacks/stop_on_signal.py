"""StopOnSignal: SIGTERM (what a scheduler sends before it kills a job) or SIGINT (Ctrl-C) during `fit` finishes the
step in progress, saves a resumable checkpoint of it and the LoRA adapter, and ends the process with status
128 + the signal number (143 for SIGTERM, 130 for SIGINT), so a job chain sees that the run did not finish.

- The first signal is noted; at the end of the step in progress the checkpoint (`last.ckpt` in the run's checkpoint
  folder) and the adapter (`adapter/step-N`) are written, then `StoppedBySignal` is raised. The checkpoint is saved
  at the same point of the step as `ModelCheckpoint` saves its own, so `--ckpt_path last` resumes it exactly.
- A second signal, or a signal before any step of this process finished (model loading, the first step), stops
  at once: nothing new would be saved, and the earlier checkpoint (if any) is untouched.
- A signal during the last planned step lets the run finish as usual (its own checkpoint, `adapter/final`).
"""
from __future__ import annotations

import os
import shlex
import signal
import threading
from typing import Any

import lightning as L

from qerl.callbacks.adapter_export import AdapterExport, run_dir
from qerl.parallel import sum_over_ranks
from qerl.training.checkpoint_io import CheckpointError
from qerl.training.run_folder import plan_resume

#: the signals that stop a run gracefully
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StoppedBySignal(SystemExit):
    """A run stopped by a signal; the exit status is 128 + its number. `checkpoint` / `adapter` are the files
    written for the last finished step (None when it stopped before a step of this process finished)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None = None, adapter: str | None = None) -> None:
        super().__init__(128 + int(signum))
        self.signum, self.step, self.checkpoint, self.adapter = int(signum), int(step), checkpoint, adapter

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


def checkpoint_path(trainer: L.Trainer) -> str:
    """`last.ckpt` in the folder the run's `ModelCheckpoint` writes to (`<log_dir>/checkpoints` without one)."""
    callback = trainer.checkpoint_callback
    folder = getattr(callback, "dirpath", None) or os.path.join(run_dir(trainer), "checkpoints")
    name = getattr(callback, "CHECKPOINT_NAME_LAST", "last") or "last"
    return os.path.join(os.fspath(folder), f"{name}.ckpt")


class StopOnSignal(L.Callback):
    """On SIGTERM or SIGINT: finish the step, save a resumable checkpoint and the adapter, raise `StoppedBySignal`."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.steps_done = 0  # optimizer steps finished by this process
        self._original: dict[int, Any] = {}  # the handlers found at `setup`, put back at `teardown`
        self._trainer: L.Trainer | None = None
        self._done = True  # outside a fit (or after it failed) a signal gets the handler found at `setup`

    # ------------------------------------------------------------------ handlers
    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            previous = signal.signal(signum, self._on_signal)
            self._original.setdefault(signum, previous)

    def _pass_on(self, signum: int, frame: Any) -> None:
        """What the handler found at `setup` would have done (Lightning puts ours back after a failed fit)."""
        original = self._original.get(signum, signal.SIG_DFL)
        if callable(original):
            original(signum, frame)
        elif original != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._done:
            return self._pass_on(signum, frame)
        name = signal.Signals(signum).name
        step = self._trainer.global_step if self._trainer is not None else 0
        if self.received is not None or self.steps_done == 0:
            raise StoppedBySignal(signum, step)
        self.received = signum
        os.write(2, (f"\nqerl: {name} received: finishing step {step + 1}, then saving a checkpoint and the "
                     f"adapter ({name} again stops at once, without them)\n").encode())

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if stage == "fit":
            self.received, self.steps_done, self._done = None, 0, False
            self._install()  # while the model loads: a signal stops at once (nothing to save yet)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registered its own SIGTERM handler after `setup` (it would end the loop with exit status 0,
        # without a checkpoint): take over again; its teardown puts back what it found (ours, until `teardown`)
        self._install()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._done = True  # `teardown` is not called after an exception

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._done = True
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._original.items():
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)

    # ------------------------------------------------------------------ the stop
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.steps_done += 1
        # every rank stops at the same step (the checkpoint is written by all of them together)
        if sum_over_ranks([float(self.received is not None)], pl_module.device)[0] == 0:
            return
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            return  # the last planned step: the run ends normally, with its own checkpoint and final adapter
        signum = self.received if self.received is not None else signal.SIGTERM
        path = checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)
        exporter = next((c for c in trainer.callbacks if isinstance(c, AdapterExport)), None)
        adapter = exporter.export(trainer, pl_module, f"step-{trainer.global_step}") if exporter is not None else None
        raise StoppedBySignal(signum, trainer.global_step, path, adapter)


def _without_ckpt_path(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return kept


def stopped_message(stopped: StoppedBySignal, command: str, argv: list[str], trainer_config: Any) -> str:
    """What `qerl fit` prints when a signal stopped it: what was saved and the command that resumes it.

    Args:
        command: how errors name the run (`qerl fit --config recipe.yaml`).
        argv: the run's arguments; the resume command is them with `--ckpt_path` set.
        trainer_config: the parsed `trainer` section (to tell whether `--ckpt_path last` finds the checkpoint).
    """
    if stopped.checkpoint is None:
        return (f"{command}: stopped by {stopped.signal_name} before a step of this run finished: nothing new to "
                "save (an earlier checkpoint, if any, is unchanged).\n")
    saved = f"checkpoint {stopped.checkpoint}" + (f", adapter {stopped.adapter}" if stopped.adapter else "")
    try:
        plan = plan_resume("last", trainer_config, warn=lambda _line: None)
    except CheckpointError:
        plan = None
    found = plan is not None and os.path.realpath(plan.ckpt_path) == os.path.realpath(stopped.checkpoint)
    resume = shlex.join(["qerl", *_without_ckpt_path(argv), "--ckpt_path", "last" if found else stopped.checkpoint])
    return (f"{command}: stopped by {stopped.signal_name} after step {stopped.step}; saved {saved}.\n"
            f"resume with: {resume}\n")
