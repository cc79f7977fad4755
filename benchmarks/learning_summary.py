"""Reading a learning study back: TensorBoard curves and step/validation times of each run, `qerl eval` summaries,
and the per-run and per-variant numbers computed from them (used by learning.py; no GPU, no qerl import)."""
from __future__ import annotations

import glob
import json
import os
import shutil

#: the row metrics whose mean/std over seeds `spread` gives
SPREAD = ("train_acc_last20", "entropy_last20", "val_acc_final", "heldout_after", "takeoff_step", "step_s_median",
          "entropy_first20")
TAKEOFF = 0.1  # a run takes off at the first step whose 10-step mean train accuracy exceeds this


def read_runs(out: str, keep: tuple[str, ...], start: float = 0.0) -> tuple[dict, dict]:
    """Every run's TensorBoard scalars of the `keep` tags, {run: {tag: [[step, value], ...]}}, and when its steps and validations
    happened, {run: {first_step_s, last_step_s, val_s: [[step, seconds]]}}: wall times in seconds from `start`, a
    validation's seconds from its step's training event to its own (both are written as they happen)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, times = {}, {}
    for name in sorted(os.listdir(os.path.join(out, "runs")) if os.path.isdir(os.path.join(out, "runs")) else []):
        for folder in sorted(glob.glob(os.path.join(out, "runs", name, "version_*"))):
            acc = EventAccumulator(folder, size_guidance={"scalars": 0})
            acc.Reload()
            have = acc.Tags().get("scalars", [])
            scalars[name] = {tag: [[e.step, round(e.value, 6)] for e in acc.Scalars(tag)] for tag in have if tag in keep}
            wall = {tag: {e.step: e.wall_time for e in acc.Scalars(tag)} for tag in ("train/accuracy", "val/accuracy")
                    if tag in have}
            train = wall.get("train/accuracy")
            if train:
                times[name] = {"first_step_s": round(min(train.values()) - start, 1),
                               "last_step_s": round(max(train.values()) - start, 1),
                               "val_s": [[step, round(t - train[step], 1)]
                                         for step, t in sorted(wall.get("val/accuracy", {}).items()) if step in train]}
    return scalars, times


def evals(out: str, copy: bool = False) -> dict:
    """{eval tag: its summary's metrics}; `copy`: each summary.json also as `<out>/eval-<tag>.json`."""
    table = {}
    for path in sorted(glob.glob(os.path.join(out, "eval", "*", "summary.json"))):
        tag = os.path.basename(os.path.dirname(path))
        with open(path) as f:
            summary = json.load(f)
        table[tag] = summary.get("metrics", {})
        if copy:
            shutil.copyfile(path, os.path.join(out, f"eval-{tag}.json"))
    return table


def mean(points: list, lo: int, hi: int) -> float | None:
    """Mean value of the [step, value] points with lo <= step < hi."""
    vals = [v for step, v in points if lo <= step < hi]
    return round(sum(vals) / len(vals), 4) if vals else None


def takeoff(points: list, window: int = 10, level: float = TAKEOFF) -> int | None:
    """The first step whose trailing `window`-step mean of `points` ([step, value]) exceeds `level`, or None."""
    values = [v for _, v in sorted(points)]
    steps = [s for s, _ in sorted(points)]
    for i in range(window - 1, len(values)):
        if sum(values[i - window + 1 : i + 1]) / window > level:
            return steps[i]
    return None


def spread(rows: list[dict]) -> dict:
    """{variant: {metric: {mean, std, min, max, n}}} over the runs (seeds) of each variant; std is the sample std."""
    out: dict = {}
    for variant in sorted({r["variant"] for r in rows}):
        out[variant] = {}
        for key in SPREAD:
            vals = [r[key] for r in rows if r["variant"] == variant and r.get(key) is not None]
            if not vals:
                continue
            m = sum(vals) / len(vals)
            std = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
            out[variant][key] = {"mean": round(m, 4), "std": round(std, 4), "min": min(vals), "max": max(vals),
                                 "n": len(vals)}
    return out
