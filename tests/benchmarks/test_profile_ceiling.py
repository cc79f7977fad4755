"""benchmarks/profile_ceiling.py reproduces docs/vllm.md's ceiling table from the committed H100 profile."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import profile_ceiling

PROFILE = ROOT / "benchmarks/results/rollout-profile-NVIDIA-H100-80GB-HBM3-2026-12-06.json"


def test_the_committed_profile_gives_the_docs_ceiling():
    rows = profile_ceiling.ceiling(json.loads(PROFILE.read_text()), 6.5e9, 770.0, 1.6)
    got = {r["batch"]: (round(r["today"], 2), round(r["prefill_fix"], 2), round(r["perfect_gemm"], 2),
                        round(r["decode_only_perfect"], 2)) for r in rows}
    assert got == {8: (1.41, 1.45, 1.69, 1.72), 64: (0.98, 1.12, 1.50, 1.63), 128: (0.79, 0.91, 1.27, 1.34),
                   256: (0.84, 1.00, 1.33, 1.45)}
    assert all(r["perfect_ms"] >= 1.6 for r in rows)  # never below the weight-read floor
    assert rows[2]["shared_ms"] == pytest.approx(6.99, abs=0.01)  # 128 rows: the work both bases share
