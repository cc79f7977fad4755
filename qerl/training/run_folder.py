"""One folder per run, and which checkpoint `--ckpt_path` means: the one place a resume is resolved.

A run lives in its logger's version folder, `<save_dir>/<name>/version_N/`, with its checkpoints in
`checkpoints/` there (Lightning's `ModelCheckpoint` default when no `dirpath` is given). Before anything is
built, `plan_resume` turns `--ckpt_path` into a checked file and the run it belongs to:

- `last`: the newest run of this recipe (or the logger's `version`, if the recipe pins one) and its newest
  intact checkpoint; a damaged file is skipped with a warning naming it and the file used instead;
- a path: that file, checked; a file inside `version_N/checkpoints/` continues run N.

A resumed run keeps logging into its own version folder, and TensorBoard hides what the killed run had
logged after the checkpoint (`purge_step`), so no step appears twice.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any

from qerl.training.checkpoint_io import CheckpointError, read_checkpoint, remove_orphans
from qerl.training.run_loggers import config_value, logger_location, run_folders

#: `--ckpt_path` values Lightning resolves itself
LIGHTNING_KEYWORDS = ("best", "hpc", "registry")
_VERSION = re.compile(r"^version_(\d+)$")


@dataclass
class ResumePlan:
    """The checkpoint a run continues from, its step, and the logger version it continues (None: a new one)."""

    ckpt_path: str
    step: int
    logged_step: int
    version: int | str | None


def run_location(trainer_config: Any) -> tuple[str, str, Any] | None:
    """(save_dir, name, version) of the first logger's runs (TensorBoard, CSV, W&B: `qerl.training.run_loggers`)."""
    return logger_location(trainer_config)


def fixed_checkpoint_dir(trainer_config: Any) -> str | None:
    """The `dirpath` a recipe gave its `ModelCheckpoint` (None: checkpoints go into the run's folder)."""
    for callback in config_value(trainer_config, "callbacks") or []:
        if str(config_value(callback, "class_path", "")).endswith("ModelCheckpoint"):
            dirpath = config_value(config_value(callback, "init_args"), "dirpath")
            if dirpath:
                return str(dirpath)
    return None


def version_folders(root: str) -> list[str]:
    """`version_N` folders under `root`, newest (highest N) first."""
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(root) if (m := _VERSION.match(name))]
    return [os.path.join(root, name) for _, name in sorted(found, reverse=True)]


def checkpoints_in(folder: str) -> list[str]:
    """`*.ckpt` files in `folder`, newest first (`last*` first among equal times)."""
    if not os.path.isdir(folder):
        return []
    files = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".ckpt")]
    return sorted(files, key=lambda f: (os.path.getmtime(f), os.path.basename(f).startswith("last")), reverse=True)


def newest_intact(files: list[str], warn) -> tuple[str, dict]:
    """The first file of `files` that loads; each damaged one before it is reported with `warn`."""
    damaged: list[tuple[str, str]] = []
    for path in files:
        try:
            data = read_checkpoint(path)
        except CheckpointError as exc:
            damaged.append((path, str(exc)))
            continue
        for bad, why in damaged:
            warn(f"qerl: warning: {why.rstrip('.')}; resuming from {path} (step {data['global_step']}) instead.")
        return path, data
    raise CheckpointError(f"no intact checkpoint to resume from: {damaged[0][1]}" if len(damaged) == 1 else
                          f"no intact checkpoint to resume from ({len(damaged)} damaged: "
                          f"{', '.join(p for p, _ in damaged)}).")


def _last_of_run(location, fixed_dir: str | None, warn) -> tuple[str, dict, Any]:
    if fixed_dir is not None:
        folders = [(fixed_dir, None)]
    elif location is None:
        raise CheckpointError("--ckpt_path last needs a TensorBoardLogger, CSVLogger or WandbLogger run folder (or "
                              "a ModelCheckpoint dirpath) to look in; give the checkpoint's path instead.")
    else:
        save_dir, name, version = location
        root = os.path.join(save_dir, name)
        if version is not None:
            label = version if isinstance(version, str) else f"version_{version}"
            folders = [(os.path.join(root, label), version)]
        else:
            folders = run_folders(root)  # version_N (TensorBoard, CSV) or W&B run ids
        folders = [(os.path.join(f, "checkpoints"), v) for f, v in folders]
    for folder, version in folders:
        if os.path.isdir(folder):
            remove_orphans(folder)
        files = checkpoints_in(folder)
        if files:
            path, data = newest_intact(files, warn)
            return path, data, version
    where = fixed_dir or os.path.join(*location[:2])
    raise CheckpointError(f"--ckpt_path last: no checkpoint in {where} (looked in "
                          f"{', '.join(f for f, _ in folders) or 'no run folder'}); run without --ckpt_path to start.")


def _version_of(path: str, location) -> Any:
    """N when `path` is `<save_dir>/<name>/version_N/checkpoints/<file>`, else None (a new version)."""
    if location is None:
        return None
    save_dir, name, _ = location
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(folder) != "checkpoints":
        return None
    run = os.path.dirname(folder)
    if os.path.realpath(os.path.dirname(run)) != os.path.realpath(os.path.join(save_dir, name)):
        return None
    match = _VERSION.match(os.path.basename(run))
    return int(match.group(1)) if match else os.path.basename(run)


def _logged_step(data: dict) -> int:
    """The logger step the resumed run logs first (Lightning logs at its count of optimizer-stepped batches; a
    checkpoint saved at a batch's end holds the count before that batch's increment, which a restart adds)."""
    if "log_step" in data.get("qerl", {}):  # QeRLModule re-logs the checkpointed step's metrics at this step
        return int(data["qerl"]["log_step"])
    fit = data.get("loops", {}).get("fit_loop", {})
    stepped = fit.get("epoch_loop.state_dict", {}).get("_batches_that_stepped")
    if stepped is None:
        return int(data["global_step"])
    current = fit.get("epoch_loop.batch_progress", {}).get("current", {})
    return int(stepped) + int(current.get("completed", 0) < current.get("processed", 0))


def plan_resume(ckpt_path: str | None, trainer_config: Any, warn=None) -> ResumePlan | None:
    """Resolve `--ckpt_path` for the run `trainer_config` describes; None when there is nothing to resolve.

    Raises `CheckpointError` (one line naming the file) for a missing or damaged checkpoint.
    """
    if not ckpt_path or ckpt_path in LIGHTNING_KEYWORDS:
        return None
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    location = run_location(trainer_config)
    if ckpt_path == "last":
        path, data, version = _last_of_run(location, fixed_checkpoint_dir(trainer_config), warn)
    else:
        path = os.path.abspath(os.path.expanduser(ckpt_path))
        data = read_checkpoint(path)
        version = _version_of(path, location)
    return ResumePlan(path, int(data["global_step"]), _logged_step(data), version)


def continue_run(config: Any, pin_version: bool) -> ResumePlan | None:
    """`plan_resume` for a parsed subcommand config, written back into it: the checked file as `ckpt_path`, and
    for `fit` the logger's `version` (and TensorBoard's `purge_step`) of the run being continued."""
    plan = plan_resume(config_value(config, "ckpt_path"), config_value(config, "trainer"))
    if plan is None:
        return None
    config.ckpt_path = plan.ckpt_path
    logger = config_value(config_value(config, "trainer"), "logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    args = config_value(logger, "init_args")
    if not pin_version or plan.version is None or args is None:
        plan.version = None
        return plan
    args.version = plan.version
    if "purge_step" in args:  # TensorBoard hides what the killed run logged after the checkpoint
        args.purge_step = plan.logged_step
    return plan


def check_inputs(datamodule: Any, subcommand: str) -> None:
    """Read the data a run needs, so a missing or malformed file is named before the model loads."""
    rows = getattr(datamodule, "rows", None)
    if not callable(rows):
        return
    for split in {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(subcommand, ()):
        rows(split)


def first_missing(path: str) -> str | None:
    """The outermost folder of `path` (itself included) that does not exist yet, or None when `path` exists: what a
    run writing to `path` creates."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        return None
    while not os.path.exists(os.path.dirname(path)):
        path = os.path.dirname(path)
    return path


def remove_stub(log_dir: str, created: str | None = None) -> None:
    """Delete a run folder that this process created and that holds no checkpoint or adapter; with `created` (the
    outermost folder the run made, `first_missing` before it started) also the folders between them, when empty."""
    if not os.path.isdir(log_dir):
        return
    for folder in ("checkpoints", "adapter"):
        if os.path.isdir(os.path.join(log_dir, folder)) and os.listdir(os.path.join(log_dir, folder)):
            return
    import shutil

    shutil.rmtree(log_dir, ignore_errors=True)
    if created is None:
        return
    created, parent = os.path.abspath(created), os.path.dirname(os.path.abspath(log_dir))
    while (parent == created or parent.startswith(created + os.sep)) and os.path.isdir(parent) and not os.listdir(parent):
        os.rmdir(parent)
        if parent == created:
            break
        parent = os.path.dirname(parent)
