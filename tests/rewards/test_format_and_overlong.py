import pytest

from qerl.rewards import OverlongPenalty, SoftThinkAnswerFormat, ThinkAnswerFormat


@pytest.mark.parametrize("text,strict,soft", [
    ("<think>add them</think><answer>5</answer>", 1, 1),
    ("  <think>\nadd\n</think>\n<answer> 5 </answer>\n", 1, 1),
    ("Sure! <think>add</think><answer>5</answer>", 0, 1),
    ("<think>add</think> so <answer>5</answer>", 0, 1),
    ("<think>add</think><answer>5</answer> done", 0, 1),
    ("<think></think><answer>5</answer>", 0, 1),
    ("<think>a</think><answer></answer>", 0, 1),
    ("<think>a</think><think>b</think><answer>5</answer>", 0, 1),
    ("<answer>5</answer><think>add</think>", 0, 0),
    ("<think>add</think>", 0, 0),
    ("<answer>5</answer>", 0, 0),
    ("<think>add<answer>5</answer></think>", 0, 0),
    ("", 0, 0),
])
def test_think_answer_format(text, strict, soft):
    assert ThinkAnswerFormat()([text], [""]) == [float(strict)]
    assert SoftThinkAnswerFormat()([text], [""]) == [float(soft)]


def test_format_default_weight_is_qerls():
    assert ThinkAnswerFormat().weight == 0.2 and SoftThinkAnswerFormat(weight=1).weight == 1.0


def test_overlong_dapo_shape():
    reward = OverlongPenalty(buffer_tokens=100)
    scores = reward(["x"] * 6, [""] * 6, lengths=[0, 900, 901, 950, 1000, 1001], max_new_tokens=1000)
    assert scores == [0.0, 0.0, pytest.approx(-0.01), pytest.approx(-0.5), -1.0, -1.0]


def test_overlong_fraction_default():
    scores = OverlongPenalty()(["x"] * 3, [""] * 3, lengths=[80, 90, 100], max_new_tokens=100)
    assert scores == [0.0, pytest.approx(-0.5), -1.0]  # buffer = 0.2 * 100


def test_overlong_names_missing_meta():
    with pytest.raises(ValueError, match="lengths"):
        OverlongPenalty()(["x"], [""], max_new_tokens=10)
    with pytest.raises(ValueError, match="2 lengths for 1"):
        OverlongPenalty()(["x"], [""], lengths=[1, 2], max_new_tokens=10)
    with pytest.raises(ValueError, match="buffer_fraction"):
        OverlongPenalty(buffer_fraction=0)
