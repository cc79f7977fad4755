"""benchmarks/study_queue.py on real processes: after-evals start as their fit ends, the widths, budget and deadline."""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from study_queue import Budget, run_study, tails


def sleeper(seconds: float, code: int = 0, say: str = "") -> list[str]:
    return [sys.executable, "-c", f"import sys, time; print({say!r}); time.sleep({seconds}); sys.exit({code})"]


def test_each_fit_s_after_evals_start_when_it_ends_and_every_code_and_span_is_kept(tmp_path):
    fits = [("fit-a", sleeper(0.3)), ("fit-b", sleeper(2.5, code=1, say="boom"))]
    done = []
    budget = Budget(time.time(), budget_s=30, deadline_s=40, width=4, width_training=1)
    codes, spans = run_study(fits, [("before", sleeper(0.2))], lambda tag: [(f"{tag}-after", sleeper(0.2))], budget,
                             str(tmp_path), dict(os.environ), str(tmp_path), on_fits_done=lambda c, t: done.append(c),
                             poll_s=0.05)
    assert codes == {"fit-a": 0, "fit-b": 1, "before": 0, "fit-a-after": 0, "fit-b-after": 0}
    assert spans["fit-a-after"][0] >= spans["fit-a"][1] and spans["fit-a-after"][1] <= spans["fit-b"][1]
    assert spans["fit-a-after"][0] >= spans["before"][1]  # width_training 1: one eval at a time while fit-b trains
    assert spans["fit-b-after"][0] >= spans["fit-b"][1]
    assert done == [{"fit-a": 0, "fit-b": 1, "before": 0, "fit-a-after": 0}]  # once, when fit-b ended
    assert tails(str(tmp_path), codes) == {"fit-b": ["boom"]}


def test_no_eval_starts_after_the_budget_and_the_deadline_stops_what_still_runs(tmp_path):
    budget = Budget(time.time(), budget_s=1.5, deadline_s=3.0, grace_s=1.0)
    fits = [("fit-long", sleeper(60)), ("fit-short", sleeper(0.1))]
    codes, spans = run_study(fits, [("before", sleeper(60))], lambda tag: [(f"{tag}-after", sleeper(0.1))], budget,
                             str(tmp_path), dict(os.environ), str(tmp_path), poll_s=0.05)
    assert codes["fit-long"] == "stopped" and codes["before"] == "stopped" and codes["fit-short"] == 0
    assert codes["fit-short-after"] == 0  # queued when fit-short ended, inside the budget
    assert 3.0 <= spans["fit-long"][1] < 6 and spans["before"][1] < 6
    late = Budget(time.time(), budget_s=0.2, deadline_s=5)
    codes, _ = run_study([("fit", sleeper(0.6))], [], lambda tag: [("after", sleeper(0.1))], late, str(tmp_path),
                         dict(os.environ), str(tmp_path), poll_s=0.05)
    assert codes == {"fit": 0, "after": None}  # queued after the budget: never started
