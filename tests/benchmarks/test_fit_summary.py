"""benchmarks/fit_summary.py reads a run's TensorBoard scalars: early and late means of the key tags."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import fit_summary  # the script, imported as test_learning.py imports learning.py


def test_early_and_late_means_of_a_rising_reward(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in range(20):
        writer.add_scalar("reward/total_mean", step / 19, step)
        writer.add_scalar("train/accuracy", 0.5, step)
    writer.close()
    summary = fit_summary.summarize(str(tmp_path), window=5)
    reward = summary["reward/total_mean"]
    assert reward["steps"] == 20 and (reward["first_step"], reward["last_step"]) == (0, 19)
    assert reward["early"] == pytest.approx(2 / 19, abs=1e-5) and reward["late"] == pytest.approx(17 / 19, abs=1e-5)
    assert reward["curve"] == pytest.approx([2 / 19, 7 / 19, 12 / 19, 17 / 19], abs=1e-5)  # means of blocks of 5
    assert summary["train/accuracy"]["early"] == summary["train/accuracy"]["late"] == 0.5


def test_a_folder_without_scalars_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no TensorBoard scalars found"):
        fit_summary.summarize(str(tmp_path), window=5)
