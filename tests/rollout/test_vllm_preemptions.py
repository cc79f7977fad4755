"""`rollout/preemptions`: sequences the engine preempted (KV cache full) in the last generate, from vLLM's counter;
`rollout/recomputed_tokens`: the tokens the engine computed again for them, from its scheduler's statistics.

Its own file: its engine has a KV cache far too small for the rollout (two engines alive in one process share
vLLM's parallel state, see test_vllm_cpu_budget.py).
"""
from __future__ import annotations

import pytest
from test_vllm import tiny_policy  # tests/rollout is on sys.path (rootdir-relative imports)

from qerl.types import SamplingConfig

pytestmark = pytest.mark.slow


def counts(backend) -> tuple[float, float]:
    return backend.last_metrics["rollout/preemptions"], backend.last_metrics["rollout/recomputed_tokens"]


def test_a_kv_cache_too_small_for_the_rollout_reports_its_preemptions_per_generate():
    from qerl.rollout.vllm import VLLM

    policy, tokenizer = tiny_policy()
    # 0.002 GiB of float32 KV for 2 layers x 128 values x 2 (K, V) = 2 KiB a token: ~1,000 tokens in all;
    # max_num_seqs "auto" for a rollout of 16 completions: all 16 at once, as many running as the cache holds
    backend = VLLM(max_model_len=256, dtype="float32", kv_cache_memory_gb=0.002, max_num_seqs="auto")
    assert "max_num_seqs auto -> 16 (16 completions a rollout call" in backend.plan_rows(16)
    backend.setup(policy, tokenizer)
    try:
        assert backend.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs == backend.num_seqs == 16
        assert backend.plan_rows(64) is None and backend.num_seqs == 16  # the engine keeps what it was built with
        small = backend.generate([[5, 6, 7, 8]], SamplingConfig(n=1, temperature=1.0, max_new_tokens=8, seed=0))
        assert small.completion_ids.shape == (1, 8)
        assert counts(backend) == (0.0, 0.0)
        counter = backend._recompute
        # 16 sequences of 32 + 200 tokens need ~3,700 tokens of KV: the engine must preempt and recompute
        rollout = backend.generate([[5, 6, 7, 8] * 8] * 4, SamplingConfig(n=4, temperature=1.0, max_new_tokens=200,
                                                                          seed=0))
        assert rollout.completion_ids.shape == (16, 200)
        first = backend.last_metrics["rollout/preemptions"]
        assert first > 0
        # two counters of vLLM's that do not read each other: every preemption is scheduled again once
        assert counter.requests == first
        # each rescheduled sequence recomputes at least its last token (vLLM never takes a whole sequence from the
        # prefix cache) and at most all it held: its 32 prompt tokens and up to 199 generated ones
        recomputed = backend.last_metrics["rollout/recomputed_tokens"]
        assert first <= recomputed <= first * (32 + 199)
        backend.generate([[5, 6, 7, 8]], SamplingConfig(n=1, temperature=1.0, max_new_tokens=8, seed=0))
        # per-generate counts, not running totals
        assert counts(backend) == (0.0, 0.0)
        assert counter.tokens == recomputed
    finally:
        backend.close()
