"""MathAccuracy on math-verify: every correct form in each class gets credit, no false credit, truncation."""
import pytest
from math_classes import CORRECT, FALSE_CREDIT, TRUNCATED

from qerl.rewards import MathAccuracy


@pytest.fixture(scope="module")
def reward():
    return MathAccuracy(timeout_s=2.0)


@pytest.mark.parametrize("klass", list(CORRECT))
def test_correct_forms_get_credit(reward, klass):
    rows = CORRECT[klass]
    scores = reward([c for c, _, _ in rows], [g for _, g, _ in rows])
    wrong = [f"{c!r} vs {g!r}: {s}" for (c, g, _), s in zip(rows, scores) if s != 1.0]
    assert not wrong, "\n".join(wrong)


def test_false_credits_are_refused(reward):
    scores = reward([c for c, _, _ in FALSE_CREDIT], [g for _, g, _ in FALSE_CREDIT])
    credited = [f"{c!r} vs {g!r}" for (c, g, _), s in zip(FALSE_CREDIT, scores) if s != 0.0]
    assert not credited, "\n".join(credited)


def test_truncated_completions_need_a_closed_answer(reward):
    completions, golds = [c for c, _, _ in TRUNCATED], [g for _, g, _ in TRUNCATED]
    assert reward(completions, golds, truncated=[True] * len(TRUNCATED)) == [float(e) for _, _, e in TRUNCATED]
    assert reward(completions[:2], golds[:2], truncated=[False, False]) == [1.0, 1.0]  # the same text, not cut


def test_verdicts_are_counted(reward):
    before = dict(reward.verdicts)
    reward(["\\boxed{5}", "no answer here", "\\boxed{6}"], ["5", "5", "5"])
    assert reward.verdicts["equal"] - before.get("equal", 0) == 1
    assert reward.verdicts["different"] - before.get("different", 0) == 1


def test_truncated_flags_must_match_the_batch(reward):
    with pytest.raises(ValueError, match="2 truncated flags for 1 completions"):
        reward(["\\boxed{1}"], ["1"], truncated=[True, False])
