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


def test_unboxed_hedges_score_zero_as_gsm8k_strict_does(reward):
    """Issue #35's call: hedges, negations and lists against one gold get no credit from either reward."""
    from qerl.rewards import GSM8KAccuracy

    completions = ["#### 41 or 42", "The answer is not 42.", "x = 41 or x = 42", "41, 42, 43, 44"]
    golds = ["42", "42", "42", "44"]
    assert reward(completions, golds) == [0.0, 0.0, 0.0, 0.0]
    assert GSM8KAccuracy()(completions, golds) == [0.0, 0.0, 0.0, 0.0]
    assert reward(["#### 42", "The answer is 42.", "x = 42", "44"], golds) == [1.0, 1.0, 1.0, 1.0]


def test_list_words_join_the_items_of_a_list_gold():
    from qerl.rewards.stated_answer import hedge_in, top_level_items

    assert top_level_items("1,000") == 1 and top_level_items("3,5") == 1 and top_level_items("(1, 2)") == 1
    assert top_level_items("41, 42") == 2 and top_level_items("3 \\text{ and } 5") == 2
    assert hedge_in("x = 3 or x = 5", "3, 5") is None
    assert hedge_in("x = 3 or x = 5", "5") == "hedging word 'or'"
    assert hedge_in("41, 42, 43, 44", "44") == "several values against one gold"
