import pytest
import sympy

from qerl.rewards.latex_sympy import LatexParseError, parse_latex


@pytest.mark.parametrize("text,value", [
    ("\\frac{1}{2}", sympy.Rational(1, 2)), ("\\frac12", sympy.Rational(1, 2)), ("2^{10}", 1024),
    ("3\\sqrt{4}", 6), ("\\sqrt[3]{27}", 3), ("-2^2", -4), ("(1+i)^2", 2 * sympy.I), ("5!", 120),
    ("\\binom{6}{2}", 15), ("|{-3}|", 3), ("2\\cdot3\\times4", 24), ("8\\div2", 4), ("0.25", sympy.Rational(1, 4)),
    ("\\log_2 8", 3), ("\\lfloor 2.5 \\rfloor", 2),
])
def test_values(text, value):
    assert sympy.simplify(parse_latex(text) - value) == 0


def test_implicit_multiplication_and_symbols():
    x, y = sympy.symbols("x y")
    assert sympy.expand(parse_latex("2x(y+1)") - (2 * x * y + 2 * x)) == 0
    assert parse_latex("\\pi r^2").free_symbols == {sympy.Symbol("r")}


@pytest.mark.parametrize("text", [
    "10^10^10^10", "10^{10^{10^{10}}}", "9^{9^9}", "2^{100000}", "x^{100000}", "1000!", "\\binom{100000}{50000}",
    "1" * 100, "(" * 100 + "1" + ")" * 100, "\\frac{1}{", "\\begin{x}", "__import__('os')", "a.b", "x;y",
    "1" + "+1" * 500,
])
def test_refuses_huge_deep_and_invalid(text):
    with pytest.raises(LatexParseError):
        parse_latex(text)
