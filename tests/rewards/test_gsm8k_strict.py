"""GSM8KAccuracy is strict by default: one stated number gets credit, hedges and cut-off answers do not."""
import pytest
from gsm8k_classes import HEDGES, STATED, TRUNCATED

from qerl.rewards import GSM8KAccuracy
from qerl.rewards.final_answer import answer_region, single_number


@pytest.mark.parametrize("completion,gold,expected", STATED)
def test_a_stated_number_gets_credit(completion, gold, expected):
    assert GSM8KAccuracy()([completion], [gold]) == [1.0]


@pytest.mark.parametrize("completion,gold,expected", HEDGES)
def test_no_hedge_gets_credit(completion, gold, expected):
    assert GSM8KAccuracy()([completion], [gold]) == [0.0]


@pytest.mark.parametrize("completion,gold,expected", TRUNCATED)
def test_truncated_needs_the_answer_before_the_cut(completion, gold, expected):
    assert GSM8KAccuracy()([completion], [gold], truncated=[True]) == [float(expected)]


def test_the_same_text_untruncated_gets_credit():
    assert GSM8KAccuracy()(["The answer is 72", "#### 72"], ["72", "72"], truncated=[False, False]) == [1.0, 1.0]


def test_flexible_takes_the_last_number_like_lm_eval():
    reward = GSM8KAccuracy(flexible=True)
    assert reward(["48 + 24 = 72", "The answer is 42 or 43.", "It costs $1,000."], ["72", "43", "1000"]) == [1.0] * 3
    assert reward(["#### 72\n\nQuestion: Tom has 5 apples"], ["72"]) == [0.0]  # lm-eval reads the 5 too


def test_single_number_values():
    assert single_number("\\frac{3}{4}") == single_number("0.75") == single_number("3/4")
    assert single_number("\u22125") == -5 and single_number("-$5") == -5
    assert single_number("2.5 \\times 10^{-2}") * 40 == 1
    assert single_number("\\frac{6}{8}") is None  # not in lowest terms: a division left to do


def test_think_region():
    assert answer_region("<think>a</think>b") == "b"
    assert answer_region("<think>never closed") is None
    assert answer_region(None) is None


def test_gold_solutions_and_bad_golds():
    reward = GSM8KAccuracy()
    assert reward(["#### 18", "#### 18"], ["Janet sells 9 eggs.\n#### 18", "18 or 19"]) == [1.0, 0.0]
