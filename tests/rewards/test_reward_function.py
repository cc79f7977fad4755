"""RewardFunction: plain (TRL-style) reward functions from a real module, called with completions, prompts, columns, step."""
from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import pytest

from qerl.rewards.function import RewardFunction
from qerl.rewards.function_import import RewardFunctionError

HERE = Path(__file__).resolve().parent

MODULE = '''
import asyncio
import math

CALLS = []


def seen(completions, prompts, step, **kwargs):
    CALLS.append({"completions": completions, "prompts": prompts, "step": step, **kwargs})
    return [float(len(c)) for c in completions]


def only_named(completions, level):
    return [float(x) for x in level]


async def async_length(completions, **kwargs):
    await asyncio.sleep(0)
    return [len(c) / 10 for c in completions]


def explodes_on_x(completions, **kwargs):
    if any("x" in c for c in completions):
        raise ZeroDivisionError("no x please")
    return [1.0] * len(completions)


def bad_values(completions, **kwargs):
    return [math.nan, None, "high", 2, True][: len(completions)]


def too_short(completions, **kwargs):
    return [1.0] * (len(completions) - 1)


def needs_solution(completions, solution, **kwargs):
    return [1.0 if c == s else 0.0 for c, s in zip(completions, solution)]


class Scaled:
    def __init__(self, factor=1.0):
        self.factor = factor

    async def __call__(self, completions, **kwargs):
        return [self.factor * len(c) for c in completions]
'''


@pytest.fixture
def module_name(tmp_path, monkeypatch):
    """A real reward module in a temporary folder, importable by name."""
    name = f"my_rewards_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def call(reward, completions, metas=None, step=7):
    metas = metas or [{} for _ in completions]
    return reward(completions, ["gold"] * len(completions), meta=metas, prompts=[f"p{i}" for i in range(len(metas))],
                  step=step, lengths=[len(c) for c in completions], truncated=[False] * len(completions),
                  max_new_tokens=16, completion_ids=[[1, 2]] * len(completions))


def test_called_with_completions_prompts_columns_and_step(module_name):
    reward = RewardFunction(f"{module_name}:seen")
    scores = call(reward, ["ab", "abcd"], [{"level": 1, "source": "f.parquet:0"}, {"level": 3, "source": "f.parquet:1"}])
    assert scores == [2.0, 4.0] and reward.name == "seen"
    got = sys.modules[module_name].CALLS[-1]
    assert got["completions"] == ["ab", "abcd"] and got["prompts"] == ["p0", "p1"] and got["step"] == 7
    assert got["level"] == [1, 3] and got["source"] == ["f.parquet:0", "f.parquet:1"]
    assert got["answers"] == ["gold", "gold"] and got["completion_ids"] == [[1, 2], [1, 2]]
    assert got["max_new_tokens"] == 16 and "meta" not in got


def test_a_function_without_kwargs_gets_only_what_it_names(module_name):
    assert call(RewardFunction(f"{module_name}.only_named"), ["a", "b"], [{"level": 2}, {"level": 5}]) == [2.0, 5.0]


def test_async_functions_and_classes_are_awaited(module_name):
    assert call(RewardFunction(f"{module_name}:async_length"), ["abcde", ""]) == [0.5, 0.0]
    scaled = RewardFunction(f"{module_name}:Scaled", arguments={"factor": 0.5}, weight=2.0)
    assert call(scaled, ["abcd"]) == [2.0] and scaled.name == "Scaled" and scaled.weight == 2.0


def test_chat_prompts_give_chat_completions(module_name):
    reward = RewardFunction(f"{module_name}:seen")
    chat = [{"role": "user", "content": "1+1?"}]
    call(reward, ["2"], [{"prompt": chat}])
    got = sys.modules[module_name].CALLS[-1]
    assert got["completions"] == [[{"role": "assistant", "content": "2"}]] and got["prompts"] == [chat]
    assert "prompt" not in got


def test_an_exception_costs_only_the_rows_that_raise(module_name, caplog):
    reward = RewardFunction(f"{module_name}:explodes_on_x")
    with caplog.at_level(logging.WARNING, logger="qerl.rewards.function"):
        scores = call(reward, ["ok", "xx", "fine", "x"], [{"source": f"d.csv:{i}"} for i in range(4)])
    assert scores == [1.0, 0.0, 1.0, 0.0] and reward.bad_rows == 2
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "explodes_on_x" in lines[0] and "row 1 (d.csv:1)" in lines[0] and "ZeroDivisionError" in lines[0]
    assert "1 more rows failed" in lines[0] and "step 7" in lines[0]


def test_nan_and_non_numbers_score_zero_with_one_line(module_name, caplog):
    reward = RewardFunction(f"{module_name}:bad_values")
    with caplog.at_level(logging.WARNING, logger="qerl.rewards.function"):
        scores = call(reward, ["a", "b", "c", "d", "e"])
    assert scores == [0.0, 0.0, 0.0, 2.0, 1.0]  # NaN -> 0 (warned), None -> 0 (not applicable), "high" -> 0
    (line,) = [r.getMessage() for r in caplog.records]
    assert "bad_values" in line and "row 0" in line and "nan" in line and "1 more rows failed" in line


def test_a_wrong_length_scores_the_batch_zero(module_name, caplog):
    reward = RewardFunction(f"{module_name}:too_short")
    with caplog.at_level(logging.WARNING, logger="qerl.rewards.function"):
        assert call(reward, ["a", "b", "c"]) == [0.0, 0.0, 0.0]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "too_short" in line and "returned 2 scores for 3 completions" in line


def test_a_missing_column_is_one_clear_error(module_name):
    reward = RewardFunction(f"{module_name}:needs_solution")
    with pytest.raises(RewardFunctionError, match=r"needs_solution .*'solution'.*dataset columns level"):
        call(reward, ["a"], [{"level": 1}])
    assert call(reward, ["a", "b"], [{"solution": "a"}, {"solution": "c"}]) == [1.0, 0.0]


def test_the_file_form_and_the_tutorial_module():
    reward = RewardFunction(f"{HERE / 'trl_format_reward.py'}:format_reward", weight=0.2)
    assert call(reward, ["<think>6*7</think><answer>42</answer>", "42"]) == [1.0, 0.0]
    chat = RewardFunction(f"{HERE / 'trl_format_reward.py'}:accuracy_reward")
    assert call(chat, ["<answer>42</answer>", "<answer>41</answer>"],
                [{"prompt": [{"role": "user", "content": "6*7"}], "solution": "42"}] * 2) == [1.0, 0.0]


@pytest.mark.parametrize(("spec", "message"), [
    ("no_such_module_qerl:f", "no module 'no_such_module_qerl'"),
    ("json:no_such_function", "json has no 'no_such_function'"),
    ("justaname", "should be 'package.module:function'"),
    ("missing/rewards.py:f", "file missing/rewards.py not found"),
    ("qerl.rewards.think_format:ThinkAnswerFormat", "is a qerl Reward"),
])
def test_bad_function_names_are_one_line(spec, message):
    with pytest.raises(RewardFunctionError, match=message) as info:
        RewardFunction(spec)
    assert "\n" not in str(info.value)


def test_the_current_directory_is_searched_like_python_m(tmp_path, monkeypatch):
    (tmp_path / "cwd_rewards_qerl.py").write_text("def one(completions, **kwargs):\n    return [1] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert call(RewardFunction("cwd_rewards_qerl:one"), ["a"]) == [1.0]
    finally:
        sys.modules.pop("cwd_rewards_qerl", None)


def test_a_batch_only_failure_keeps_the_row_scores(tmp_path, monkeypatch, caplog):
    (tmp_path / "batchy_qerl.py").write_text(
        "def batchy(completions, **kwargs):\n"
        "    if len(completions) > 1:\n        raise MemoryError('batch too big')\n"
        "    return [len(completions[0])]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = RewardFunction("batchy_qerl:batchy")
    try:
        with caplog.at_level(logging.WARNING, logger="qerl.rewards.function"):
            assert call(reward, ["a", "abc"]) == [1.0, 3.0]
    finally:
        sys.modules.pop("batchy_qerl", None)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "batch too big on the batch of 2 but on no row alone" in line and reward.bad_rows == 0
