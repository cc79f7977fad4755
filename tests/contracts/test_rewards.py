"""Contract every REWARDS entry meets (built-ins and plugins alike)."""
from __future__ import annotations

import math
from pathlib import Path

from qerl.registry import REWARDS
from qerl.rewards.base import Reward

#: arguments an entry cannot do without (a RewardFunction names its function: the tutorial's TRL-style module)
REQUIRED = {"RewardFunction": {"function": f"{Path(__file__).parents[1] / 'rewards' / 'trl_format_reward.py'}:format_reward"}}


def build(entry) -> Reward:
    return entry.cls(**REQUIRED.get(entry.name, {}))  # otherwise buildable from its defaults (YAML class_path only)

COMPLETIONS = [
    "<think>6*7</think><answer>42</answer>",
    "The answer is \\boxed{42}.",
    "#### 41",
    "",
    "x" * 1_000_000,
    "\\boxed{10^10^10^10}",
    "\\boxed{" + "{" * 1000 + "}" * 1000 + "}",
    "\\boxed{\\frac{1}{\\sqrt{}}",
]
META = {"lengths": [5, 9, 3, 0, 4000, 8, 2001, 7], "max_new_tokens": 4000}


def test_the_builtins_are_registered():
    assert {"GSM8KAccuracy", "MathAccuracy", "ThinkAnswerFormat", "SoftThinkAnswerFormat", "OverlongPenalty",
            "RewardFunction"} <= set(REWARDS.names())


def test_entry_is_a_documented_reward(rewards_entry):
    assert issubclass(rewards_entry.cls, Reward)
    assert rewards_entry.summary, f"{rewards_entry.name} needs a one-line docstring (`qerl list`)"


def test_defaults_score_every_completion_with_a_finite_float(rewards_entry):
    reward = build(rewards_entry)
    assert isinstance(reward.weight, float) and isinstance(reward.name, str) and reward.name
    scores = reward(COMPLETIONS, ["42"] * len(COMPLETIONS), **META)
    assert len(scores) == len(COMPLETIONS)
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores)
    assert scores == reward(COMPLETIONS, ["42"] * len(COMPLETIONS), **META)  # deterministic


def test_adversarial_completions_never_score_positive(rewards_entry):
    reward = build(rewards_entry)
    scores = reward(COMPLETIONS[3:], ["42"] * 5, lengths=META["lengths"][3:], max_new_tokens=4000)
    assert all(s <= 0.0 for s in scores)
