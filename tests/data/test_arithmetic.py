import re

import pytest

from qerl.data import Arithmetic, DatasetError
from qerl.data.arithmetic import evaluate


def test_answers_are_exact_integers():
    dm = Arithmetic(digits=3, num_operands=4, operations="+-*", num_train=300, num_val=0, num_test=10)
    for row in dm.rows("train"):
        a, op1, b, op2, c, op3, d = re.fullmatch(r"What is (.*)\?", row.question).group(1).split()
        ops, nums = [op1, op2, op3], [int(a), int(b), int(c), int(d)]
        assert int(row.answer) == evaluate(nums, ops, left_to_right=False)
        assert all(0 <= n <= 999 for n in nums)


def test_precedence():
    assert evaluate([2, 3, 4], ["+", "*"], left_to_right=False) == 14
    assert evaluate([2, 3, 4], ["+", "*"], left_to_right=True) == 20
    assert evaluate([10, 2, 3, 4], ["-", "*", "+"], left_to_right=False) == 8


def test_seeded_and_split():
    a = Arithmetic(num_train=50, num_val=10, num_test=20, seed=3)
    b = Arithmetic(num_train=50, num_val=10, num_test=20, seed=3)
    assert [r.question for r in a.rows("train")] == [r.question for r in b.rows("train")]
    assert (len(a.rows("train")), len(a.rows("val")), len(a.rows("test"))) == (50, 10, 20)
    assert not {r.question for r in a.rows("test")} & {r.question for r in a.rows("train") + a.rows("val")}
    c = Arithmetic(num_train=50, num_val=10, num_test=20, seed=4)
    assert [r.question for r in a.rows("train")] != [r.question for r in c.rows("train")]


def test_word_problems_never_go_negative():
    dm = Arithmetic(digits=2, num_operands=4, operations="+-", word_problems=True, num_train=300, num_val=0)
    rows = dm.rows("train")
    assert all(int(r.answer) >= 0 for r in rows)
    assert all(r.question.endswith("have now?") and " has " in r.question for r in rows)
    assert any("gives away" in r.question for r in rows) and any("more." in r.question for r in rows)


def test_one_digit_two_operands_space():
    rows = Arithmetic(digits=1, num_train=500, num_val=0).rows("train")
    assert max(int(r.answer) for r in rows) <= 18 and len({r.question for r in rows}) <= 100


@pytest.mark.parametrize("kwargs,match", [
    ({"operations": "+/"}, "operations"), ({"num_operands": 1}, "num_operands"), ({"digits": 0}, "min_digits"),
    ({"num_train": 0}, "num_train"),
])
def test_bad_knobs(kwargs, match):
    with pytest.raises(DatasetError, match=match):
        Arithmetic(**kwargs)
