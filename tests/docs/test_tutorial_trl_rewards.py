"""Tutorial 7 end to end: its TRL reward functions, unchanged, score a real 2-step `qerl fit` on its chat parquet."""
from __future__ import annotations

import math
import sys
from pathlib import Path

from docs_blocks import blocks

PAGE = Path(__file__).resolve().parents[2] / "docs" / "tutorials" / "trl-reward-functions.md"


def test_the_tutorial_recipe_trains_with_its_trl_functions(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from qerl.cli import main

    page = blocks(PAGE)
    files = {b.title: b.code for b in page if b.title}
    assert {"trl_rewards.py", "trl-style.yaml"} <= files.keys()
    assert "qerl" not in files["trl_rewards.py"]  # a TRL user's module: nothing of qerl in it
    for name, code in files.items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the run appends the cwd when it looks for trl_rewards
    (dataset,) = [b for b in page if b.lang == "python" and not b.title]
    exec(compile(dataset.code, dataset.where, "exec"), {"__name__": "__docs__"})  # noqa: S102 - the page's code
    assert (tmp_path / "toy-chat.parquet").is_file()

    try:
        assert main(["fit", "--config", "trl-style.yaml"]) == 0  # the cwd is searched for trl_rewards, like python -m
    finally:
        sys.modules.pop("trl_rewards", None)

    events = EventAccumulator(str(tmp_path / "runs" / "trl-style" / "version_0")).Reload()
    tags = events.Tags()["scalars"]
    for name in ("accuracy_reward", "format_reward"):
        found = [t for t in tags if t.startswith(f"reward/{name}")]
        assert found, tags
        values = [e.value for t in found for e in events.Scalars(t)]
        assert values and all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values), (name, values)
    assert max(e.step for t in tags if t.startswith("train/") for e in events.Scalars(t)) >= 1  # two steps ran
