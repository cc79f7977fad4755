from fractions import Fraction

import pytest

from qerl.rewards.numbers import extract_final_number, last_number, parse_number, parse_plain_number


@pytest.mark.parametrize("text,value", [
    ("42", 42), ("-1,234.50", Fraction("-1234.5")), ("$12", 12), ("3/4", Fraction(3, 4)), (".5", Fraction(1, 2)),
    ("\\frac{3}{4}", Fraction(3, 4)), ("12 cm", 12), ("  7.  ", 7), ("\\$20", 20), ("50\\%", 50),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1 2", "x+1", "4/0", "9" * 100, "12 + 5", None])
def test_parse_number_refuses(text):
    assert parse_number(text) is None


def test_plain_numbers_refuse_units_and_symbols():
    assert parse_plain_number("\\frac{-3}{4}") == Fraction(-3, 4)
    assert parse_plain_number("-\\frac{3}{4}") == Fraction(-3, 4)
    assert parse_plain_number("5x") is None and parse_plain_number("5 cm") is None


def test_extraction_priority():
    assert extract_final_number("<answer>3</answer> \\boxed{4} #### 5") == 3
    assert extract_final_number("\\boxed{4} #### 5") == 4
    assert extract_final_number("#### 5 the answer is 6") == 5
    assert extract_final_number("the answer is 6, then 7") == 6
    assert extract_final_number("1 then 2 then 3") == 3
    assert last_number("a 10-5 b") == 5  # "10-5" is 10 then 5, never -5


def test_only_the_tail_of_huge_text_is_read():
    text = "#### 1\n" + "x" * 1_000_000 + " 7"
    assert extract_final_number(text) == 7
