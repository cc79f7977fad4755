"""benchmarks/step_ceiling.py: the ragged-length generate model against the committed 7B GSM8K-shape rows, and what
the step ratio can reach (docs/step-cost.md)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import step_ceiling

RESULTS = ROOT / "benchmarks/results"
STEP = RESULTS / "step-NVIDIA-H100-80GB-HBM3-2026-12-06-gsm8k-shape.json"
PROFILE = RESULTS / "rollout-profile-NVIDIA-H100-80GB-HBM3-2026-12-06.json"


def test_rows_still_generating_and_the_interpolation_between_profiled_batches():
    assert step_ceiling.active_rows([3, 1, 2]) == [3, 2, 1]
    points = {8: 5.0, 64: 12.0, 128: 20.0}
    assert [step_ceiling.interpolate(points, b) for b in (1, 8, 36, 64, 96, 300)] == [5.0, 5.0, 8.5, 12.0, 16.0, 20.0]


def test_the_model_matches_the_measured_generates_and_bounds_the_ratio():
    rows = json.loads(STEP.read_text())["rows"]
    out = step_ceiling.ceiling(rows, json.loads(PROFILE.read_text()), None, 6.5e9, 770.0, 1.6)
    assert out["decode_steps"] == 4096 and out["steps_at_8_rows_or_fewer"] == 3313  # the tail at the cap
    for fmt in ("nvfp4", "bf16"):  # the model from 256-token profile rows within 5% of the measured generate
        assert out["generate_model_s"][fmt] == pytest.approx(out["generate_measured_s"][fmt], rel=0.05)
    assert out["ratio_measured"] == out["ratio_at_train_s"] == pytest.approx(1.26, abs=0.005)
    grouped = step_ceiling.ceiling(rows, json.loads(PROFILE.read_text()), 24.5, 6.5e9, 770.0, 1.6)
    assert grouped["ratio_at_train_s"] == pytest.approx(1.388, abs=0.002)
    assert grouped["ratio_perfect_gemm"] == pytest.approx(1.525, abs=0.002)
    # the NVFP4 generate that 1.5x needs, put back into the step, gives 1.5x
    bf_step = 35.12 + 24.5 + grouped["rest_s"]["bf16"]
    assert bf_step / (grouped["nvfp4_generate_for_1_5x_s"] + 24.5 + grouped["rest_s"]["nvfp4"]) == \
        pytest.approx(1.5, abs=0.002)
    # the other lever: training (the same seconds in both steps) short enough that the rollouts' ratio shows
    need = grouped["train_for_1_5x_s"]
    assert grouped["rollout_ratio"] == pytest.approx((35.12 + grouped["rest_s"]["bf16"]) / (26.67 + grouped["rest_s"]["nvfp4"]), abs=0.001)
    assert 12.0 < need < 14.0 and need == out["train_for_1_5x_s"]  # measured generates: independent of --train-s
    fast = step_ceiling.ceiling(rows, json.loads(PROFILE.read_text()), need, 6.5e9, 770.0, 1.6)
    assert fast["ratio_at_train_s"] == pytest.approx(1.5, abs=0.002)


def test_a_step_file_without_both_ragged_rows_is_refused_naming_the_file(tmp_path):
    bad = tmp_path / "step.json"
    bad.write_text(json.dumps({"rows": [{"format": "nvfp4", "lengths_drawn": [3, 2]}]}))
    with pytest.raises(SystemExit, match=r"step\.json: needs an nvfp4 and a bf16 row with `lengths_drawn`"):
        step_ceiling.load(str(bad), str(PROFILE))
