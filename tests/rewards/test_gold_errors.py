"""A gold answer that does not parse: warned once, its rows score 0, the batch goes on."""
import logging

import pytest

from qerl.rewards import GSM8KAccuracy, MathAccuracy


def test_gsm8k_bad_gold_warns_once(caplog):
    reward = GSM8KAccuracy()
    with caplog.at_level(logging.WARNING):
        scores = reward(["#### 5", "#### 5", "#### 7"], ["no number here", "no number here", "7"])
    assert scores == [0.0, 0.0, 1.0]
    assert sum("no number here" in r.message for r in caplog.records) == 1


def test_math_bad_gold_warns_once(caplog):
    reward = MathAccuracy()
    with caplog.at_level(logging.WARNING):
        scores = reward(["\\boxed{5}", "\\boxed{6}", "\\boxed{\\frac12}"], ["}{", "}{", "0.5"])
    assert scores == [0.0, 0.0, 1.0]
    assert sum("}{" in r.message for r in caplog.records) == 1
    assert reward.verdicts["gold_error"] == 2


def test_text_match_still_scores_for_unparsable_gold():
    reward = MathAccuracy()
    assert reward(["\\boxed{52_8}"], ["52_8"]) == [1.0]


def test_mismatched_lengths_speak_to_the_user():
    with pytest.raises(ValueError, match="2 completions but 1 gold answers"):
        GSM8KAccuracy()(["1", "2"], ["1"])
