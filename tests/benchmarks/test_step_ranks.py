"""benchmarks/step_ranks.py: how a torchrun job of benchmarks/step.py splits the prompts and rates the rows."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))

from step_ranks import compare_to_baseline, launched, own_prompts


def test_each_rank_takes_a_contiguous_equal_share_of_the_global_prompts():
    prompts = [[i] for i in range(4)]
    assert [own_prompts(prompts, 2, r) for r in (0, 1)] == [[[0], [1]], [[2], [3]]]
    assert own_prompts(prompts, 1, 0) == prompts
    with pytest.raises(SystemExit, match="3 prompts per step cannot be split over 2 ranks"):
        own_prompts(prompts[:3], 2, 0)


def test_the_data_parallel_row_is_rated_against_the_one_gpu_row_of_the_same_spec():
    spec = {"model": "7b", "format": "nvfp4", "batch": 16, "new": 512, "status": "ok"}
    rows = [dict(spec, gpus=1, tokens_per_s=1000.0), dict(spec, batch=8, gpus=1, tokens_per_s=700.0),
            dict(spec, gpus=2, tokens_per_s=1900.0)]
    compare_to_baseline(rows)
    assert rows[-1]["speedup_vs_1gpu"] == 1.9


def test_a_plain_run_is_one_process(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert launched() == (1, 0, 0)
