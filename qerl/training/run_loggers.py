"""Where each logger keeps a run, so `--ckpt_path last` continues the same run: TensorBoard, CSV and W&B.

Lightning's `ModelCheckpoint` (no `dirpath`) writes to `<save_dir>/<name>/<version>/checkpoints`, where
- TensorBoard, CSV: `name` is the logger's name and `version` is `version_N`;
- W&B (`WandbLogger`): `save_dir` is its `save_dir` (or `dir`, default "."), `name` is the project (default
  `WANDB_PROJECT`, else `lightning_logs`) and `version` is the W&B run id.
Resuming sets the logger's `version` to the run's: `version_N` for TensorBoard/CSV (TensorBoard also hides the
killed run's events after the checkpoint with `purge_step`), the run id for W&B, which `WandbLogger` passes to
`wandb.init(id=..., resume="allow")`, so W&B continues the same run. CSVLogger deletes `metrics.csv` when it opens
a non-empty folder; `keep_csv_history` puts back the rows logged before the checkpoint (the CSV twin of
`purge_step`), and trims `samples.csv` the same way.
"""
from __future__ import annotations

import csv
import os
import re
from typing import Any

#: loggers whose run folder `--ckpt_path last` can find, by class name
VERSIONED = ("TensorBoardLogger", "CSVLogger")
WANDB = "WandbLogger"
_VERSION = re.compile(r"^version_(\d+)$")
SAMPLES_CSV = "samples.csv"


def config_value(node: Any, key: str, default: Any = None) -> Any:
    """`node[key]` of a parsed config node (a dict or a namespace); `default` when the node or the key is missing."""
    if node is None:
        return default
    if isinstance(node, dict):
        return node.get(key, default)
    return getattr(node, key, default)


def first_logger(trainer_config: Any) -> Any:
    logger = config_value(trainer_config, "logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    return logger


def logger_location(trainer_config: Any) -> tuple[str, str, Any] | None:
    """(save_dir, name, version) of the first logger's runs, None for a logger without run folders."""
    logger = first_logger(trainer_config)
    class_path = str(config_value(logger, "class_path", ""))
    args = config_value(logger, "init_args")
    if class_path.endswith(VERSIONED):
        save_dir = config_value(args, "save_dir") or config_value(trainer_config, "default_root_dir") or os.getcwd()
        return str(save_dir), str(config_value(args, "name", "lightning_logs") or ""), config_value(args, "version")
    if class_path.endswith(WANDB):
        save_dir = config_value(args, "save_dir") or config_value(args, "dir") or "."
        project = config_value(args, "project") or os.environ.get("WANDB_PROJECT") or "lightning_logs"
        return str(save_dir), str(project), config_value(args, "version") or config_value(args, "id")
    return None


def run_folders(root: str) -> list[tuple[str, Any]]:
    """(folder, version) of the runs under `root`: `version_N` newest N first, then other folders (W&B run ids)
    that hold checkpoints, newest checkpoint first."""
    if not os.path.isdir(root):
        return []
    numbered, named = [], []
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if (match := _VERSION.match(name)) is not None:
            numbered.append((int(match.group(1)), path))
        elif os.path.isdir(os.path.join(path, "checkpoints")):
            stamps = [os.path.getmtime(os.path.join(path, "checkpoints", f))
                      for f in os.listdir(os.path.join(path, "checkpoints"))] or [0.0]
            named.append((max(stamps), path, name))
    return ([(path, n) for n, path in sorted(numbered, reverse=True)]
            + [(path, name) for _, path, name in sorted(named, reverse=True)])


def _rows_before(path: str, step: int) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if _step_of(r) < step]
        return list(reader.fieldnames or []), rows


def _step_of(row: dict) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


def keep_csv_history(loggers: list, logged_step: int, global_step: int) -> int:
    """For each CSVLogger of a resumed run: keep the rows of `metrics.csv` logged before `logged_step` and those of
    `samples.csv` up to the checkpoint's `global_step` (the killed run's later rows go; the resumed run logs them
    again). Returns the metrics rows kept."""
    from lightning.pytorch.loggers import CSVLogger

    kept = 0
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        metrics = os.path.join(logger.log_dir, "metrics.csv")
        header, rows = _rows_before(metrics, logged_step) if os.path.isfile(metrics) else ([], [])
        samples = os.path.join(logger.log_dir, SAMPLES_CSV)
        if os.path.isfile(samples):
            sample_header, sample_rows = _rows_before(samples, global_step + 1)
            with open(samples, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=sample_header)
                writer.writeheader()
                writer.writerows(sample_rows)
        writer = logger.experiment  # opening the writer deletes metrics.csv; the kept rows are written back
        if rows:
            writer.metrics_keys = sorted(header)
            writer.metrics = [{k: v for k, v in row.items() if v not in ("", None)} for row in rows]
            writer.save()
            kept += len(rows)
    return kept
