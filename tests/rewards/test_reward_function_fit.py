"""A real 2-step `qerl fit`: a parquet dataset (HFPrompts) scored by reward functions from a module imported by name."""
from __future__ import annotations

import math
import sys
import textwrap

import yaml

from tests.rl_helpers import TINY_RECIPE

REWARDS_MODULE = '''
import asyncio

CALLS = []


def length_bonus(completions, prompts, step, level, source, **kwargs):
    CALLS.append({"step": step, "rows": len(completions), "level": list(level), "source": list(source),
                  "prompt": prompts[0]})
    return [min(len(c), 4) / 4 for c in completions]


async def picky(completions, level, **kwargs):
    await asyncio.sleep(0)
    if 2 in level:
        raise ValueError("level 2 is not supported")
    return [float(x) for x in level]
'''

RECIPE = {**TINY_RECIPE, "trainer": {**TINY_RECIPE["trainer"], "max_steps": 2}}  # model.rewards and data: per test


def test_fit_scores_a_parquet_dataset_with_reward_functions(tmp_path, monkeypatch, caplog):
    import pandas as pd
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from qerl.cli import main

    name = "qerl_fit_rewards_module"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"{name}.py").write_text(textwrap.dedent(REWARDS_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"problem": [f"{a}+{b}" for a in range(4) for b in range(2)],
                  "answer": [str(a + b) for a in range(4) for b in range(2)],
                  "level": [a % 3 for a in range(4) for _ in range(2)]}).to_parquet(tmp_path / "train.parquet")
    recipe = {**RECIPE, "model": {**RECIPE["model"], "rewards": [
        {"class_path": "RewardFunction", "init_args": {"function": f"{name}:length_bonus"}},
        {"class_path": "RewardFunction", "init_args": {"function": f"{name}:picky", "weight": 0.5}},
    ]}, "data": {"class_path": "HFPrompts", "init_args": {
        "path": "train.parquet", "question_column": "problem", "batch_size": 4, "cache_dir": str(tmp_path / "c")}}}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    try:
        with caplog.at_level("WARNING", logger="qerl.rewards.function"):
            assert main(["fit", "--config", "fit.yaml"]) == 0
        calls = sys.modules[name].CALLS
    finally:
        sys.modules.pop(name, None)

    assert [c["step"] for c in calls] == [0, 1]  # the optimizer step of each call
    assert all(c["rows"] == 8 for c in calls)  # 4 prompts x 2 completions
    for call in calls:
        assert all(lv in (0, 1, 2) for lv in call["level"]) and call["level"][0::2] == call["level"][1::2]
        assert all(s.startswith("train.parquet[train]:") for s in call["source"])
        assert call["prompt"].endswith("<|im_start|>assistant\n")  # the chat-formatted prompt the policy saw
    failed = [r.getMessage() for r in caplog.records if "picky" in r.getMessage()]
    steps_with_level_2 = sum(2 in c["level"] for c in calls)
    assert len(failed) == steps_with_level_2 >= 1, failed  # one line per call with a failing row
    assert "level 2 is not supported" in failed[0] and "(train.parquet[train]:" in failed[0]

    events = EventAccumulator(str(tmp_path / "runs" / "fit" / "version_0")).Reload()
    tags = events.Tags()["scalars"]
    for reward in ("length_bonus", "picky"):
        values = [e.value for t in tags if t.startswith(f"reward/{reward}") for e in events.Scalars(t)]
        assert values and all(math.isfinite(v) for v in values), (reward, tags)
