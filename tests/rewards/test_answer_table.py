"""The verdict table (>= 200 cases) run through the real rewards, math-verify worker included."""
import pytest
from answer_cases import GSM8K, MATH

from qerl.rewards import GSM8KAccuracy, MathAccuracy


@pytest.fixture(scope="module")
def math_reward():
    reward = MathAccuracy(timeout_s=2.0)
    return reward


def wrap(pred: str) -> str:
    if "\\boxed" in pred or "<answer>" in pred or pred.startswith("no box"):
        return pred
    return f"Let me think step by step. So the answer is $\\boxed{{{pred}}}$."


def test_table_is_large_and_balanced():
    cases = GSM8K + MATH
    assert len(cases) >= 200
    assert sum(c[2] for c in cases) >= 80 and sum(1 - c[2] for c in cases) >= 80


@pytest.mark.parametrize("completion,gold,expected,note", GSM8K, ids=[c[3] for c in GSM8K])
def test_gsm8k_verdicts(completion, gold, expected, note):
    assert GSM8KAccuracy()([completion], [gold]) == [float(expected)], note


@pytest.mark.parametrize("completion,gold", [(c[0], c[1]) for c in GSM8K if c[3].startswith("strict:")])
def test_flexible_keeps_the_last_number_rule(completion, gold):
    assert GSM8KAccuracy(flexible=True)([completion], [gold]) == [1.0]


def test_math_verdicts(math_reward):
    wrong = []
    completions = [wrap(c[0]) for c in MATH]
    scores = math_reward(completions, [c[1] for c in MATH])
    for (pred, gold, expected, note), score in zip(MATH, scores):
        if score != float(expected):
            wrong.append(f"{note}: {pred!r} vs {gold!r} scored {score}, expected {expected}")
    assert not wrong, "\n".join(wrong)
    assert math_reward.verdicts.get("timeout", 0) == 0
