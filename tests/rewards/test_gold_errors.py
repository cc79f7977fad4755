"""A gold answer that does not parse: warned once, its rows score 0, the batch goes on."""
import logging

import pytest

from qerl.rewards import GSM8KAccuracy, MathAccuracy


@pytest.mark.parametrize("reward, completions, bad, good", [
    (GSM8KAccuracy, ["#### 5", "#### 5", "#### 7"], "no number here", "7"),
    (MathAccuracy, ["\\boxed{5}", "\\boxed{6}", "\\boxed{\\frac12}"], "}{", "0.5"),
])
def test_a_bad_gold_warns_once_and_scores_zero(caplog, reward, completions, bad, good):
    scorer = reward()
    with caplog.at_level(logging.WARNING):
        scores = scorer(completions, [bad, bad, good])
    assert scores == [0.0, 0.0, 1.0]
    assert sum(bad in r.message for r in caplog.records) == 1
    if isinstance(scorer, MathAccuracy):
        assert scorer.verdicts["gold_error"] == 2


def test_text_match_still_scores_for_unparsable_gold():
    reward = MathAccuracy()
    assert reward(["\\boxed{52_8}"], ["52_8"]) == [1.0]


def test_mismatched_lengths_speak_to_the_user():
    with pytest.raises(ValueError, match="2 completions but 1 gold answers"):
        GSM8KAccuracy()(["1", "2"], ["1"])
