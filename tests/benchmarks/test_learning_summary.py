"""benchmarks/learning_summary.py: curves and step/validation times read back from real TensorBoard event files."""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from learning_summary import evals, read_runs


def test_curves_and_the_seconds_of_each_validation_come_from_the_event_wall_times(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    start = 1_000.0
    writer = SummaryWriter(str(tmp_path / "runs" / "nvfp4-s0" / "version_0"))
    for step in range(4):  # a 1.5 s step; the validation after step 1 takes 2.5 s
        wall = start + 40 + 1.5 * (step + 1) + (2.5 if step >= 2 else 0.0)
        writer.add_scalar("train/accuracy", 0.25 * step, step, walltime=wall)
        writer.add_scalar("perf/step_s", 1.5, step, walltime=wall)
        writer.add_scalar("train/other", 1.0, step, walltime=wall)  # not kept
    writer.add_scalar("val/accuracy", 0.5, 1, walltime=start + 40 + 3.0 + 2.5)
    writer.add_scalar("val/accuracy", 0.75, 3, walltime=start + 40 + 8.5 + 1.0)
    writer.close()
    scalars, times = read_runs(str(tmp_path), ("train/accuracy", "val/accuracy", "perf/step_s"), start)
    assert scalars["nvfp4-s0"]["train/accuracy"] == [[0, 0.0], [1, 0.25], [2, 0.5], [3, 0.75]]
    assert scalars["nvfp4-s0"]["val/accuracy"] == [[1, 0.5], [3, 0.75]] and "train/other" not in scalars["nvfp4-s0"]
    assert times["nvfp4-s0"] == {"first_step_s": 41.5, "last_step_s": 48.5, "val_s": [[1, 2.5], [3, 1.0]]}


def test_eval_summaries_are_read_and_copied_flat(tmp_path):
    folder = tmp_path / "eval" / "arith-bf16-s0-after"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"run": {"model": "m"}, "metrics": {"accuracy": 0.735}}))
    assert evals(str(tmp_path)) == {"arith-bf16-s0-after": {"accuracy": 0.735}}
    assert not (tmp_path / "eval-arith-bf16-s0-after.json").exists()
    evals(str(tmp_path), copy=True)
    copied = json.loads((tmp_path / "eval-arith-bf16-s0-after.json").read_text())
    assert copied["metrics"]["accuracy"] == pytest.approx(0.735) and copied["run"] == {"model": "m"}
