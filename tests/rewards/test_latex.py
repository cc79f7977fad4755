import pytest

from qerl.rewards.latex import last_boxed, matching_brace, normalize_answer


def test_last_boxed_keeps_nested_braces():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{\\sqrt{2}}} c") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed("\\boxed 5 and more") == "5"
    assert last_boxed("\\fbox{x}") == "x"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{7} then \\boxed{unclosed") == "7"


def test_thousand_nested_braces():
    text = "\\boxed{" + "{" * 1000 + "1" + "}" * 1000 + "}"
    assert last_boxed(text) == "{" * 1000 + "1" + "}" * 1000
    assert matching_brace("{" * 1000, 0) == -1


def test_megabyte_of_unclosed_boxes_returns_none():
    assert last_boxed("\\boxed{" * 150_000) is None


@pytest.mark.parametrize("raw,norm", [
    ("\\dfrac{1}{2}", "\\frac{1}{2}"), ("\\frac43", "\\frac{4}{3}"), ("\\sqrt2", "\\sqrt{2}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"), ("90^\\circ", "90"), ("90^{\\circ}", "90"),
    ("x = 5", "5"), ("5 \\text{ cm}", "5"), ("\\text{Evelyn}", "evelyn"), ("$1,000$", "1000"), ("7.", "7"),
    ("\\$32", "32"), ("50\\%", "50"), ("\\cot x", "\\cot x"), ("025", "25"), ("27.0", "27"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
])
def test_normalize(raw, norm):
    assert normalize_answer(raw) == norm


@pytest.mark.parametrize("raw", ["", "   ", "$$", "x" * 5000, None])
def test_normalize_refuses_empty_and_huge(raw):
    assert normalize_answer(raw) is None
