"""Inputs built to hang or crash a checker score 0 within the 1 s limit, and no item needs the worker killed."""
import pytest

from qerl.rewards import GSM8KAccuracy, MathAccuracy, OverlongPenalty, SoftThinkAnswerFormat, ThinkAnswerFormat

ADVERSARIAL = {
    "1 MB of text": "x" * 1_000_000,
    "1 MB of digits": "9" * 1_000_000,
    "1 MB of unclosed boxes": "\\boxed{" * 150_000,
    "1 MB of braces": "{" * 1_000_000,
    "power tower": "\\boxed{10^10^10^10}",
    "braced power tower": "\\boxed{10^{10^{10^{10}}}}",
    "1000 nested braces": "\\boxed{" + "{" * 1000 + "1" + "}" * 1000 + "}",
    "1000 nested fractions": "\\boxed{" + "\\frac{1}{" * 1000 + "2" + "}" * 1000 + "}",
    "invalid latex": "\\boxed{\\frac{1}{\\sqrt{}}}",
    "unbalanced": "\\boxed{)(}",
    "unknown environment": "\\boxed{\\begin{x}}",
    "python injection": "\\boxed{__import__('os').system('echo hacked')}",
    "huge factorial": "\\boxed{100000!}",
    "huge binomial": "\\boxed{\\binom{10^{6}}{5000}}",
    "many think tags": "<think>" * 200_000,
    "1 MB answer tag": "<answer>" + "1" * 1_000_000 + "</answer>",
    "long polynomial": "\\boxed{" + "+".join(f"x^{{{i}}}" for i in range(300)) + "}",
    "nul bytes": "\\boxed{\x00\x00}",
    "non-string": None,
    "tower refused before evaluation": "\\boxed{(9^{9999})^{9999}}",
    "huge symbolic power": "\\boxed{x^{100000}}",
    "5000-digit box": "\\boxed{" + "9" * 5000 + "}",
    "5000-digit marker": "#### " + "9" * 5000,
    "many answer phrases": "The answer is " * 20_000,
    "many dollars": "$" * 200_000,
    "1000 nested roots": "\\boxed{" + "\\sqrt{" * 1000 + "2" + "}" * 1000 + "}",
    "wide matrix": "\\boxed{\\begin{pmatrix}" + "1&" * 3000 + "1\\end{pmatrix}}",
    "many unclosed answer tags": "<answer>" * 100_000,
    "many boxes": "\\boxed{1}" * 50_000,
    "unboxed power tower": "So the answer is $10^{10^{10^{10}}}$.",
    "think never closed": "<think>" + "\\boxed{5}" * 10,
}


@pytest.fixture(scope="module")
def rewards():
    math = MathAccuracy(timeout_s=1.0)
    return [math, GSM8KAccuracy(), ThinkAnswerFormat(), SoftThinkAnswerFormat()]


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_scores_zero(rewards, name):
    completion = ADVERSARIAL[name]
    for reward in rewards:
        gold = "x^2+1" if isinstance(reward, MathAccuracy) else "5"
        assert reward([completion], [gold]) == [0.0], f"{reward.name} on {name}"


def test_nothing_needed_a_kill(rewards):
    math = rewards[0]
    assert math.checker.restarts == 0
    assert math.verdicts.get("timeout", 0) == 0


def test_injection_never_runs(tmp_path, rewards):
    marker = tmp_path / "pwned"
    payload = f"\\boxed{{__import__('pathlib').Path('{marker}').touch()}}"
    assert rewards[0]([payload], ["1"]) == [0.0]
    assert not marker.exists()


def test_overlong_with_huge_lengths():
    assert OverlongPenalty()(["a", "b"], ["", ""], lengths=[10**12, 0], max_new_tokens=100) == [-1.0, 0.0]
