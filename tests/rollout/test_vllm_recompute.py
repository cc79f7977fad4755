"""`qerl.rollout.vllm.recompute`: the preempted sequences' prefill, summed from vLLM's own scheduler statistics.

The counter over a real engine that preempts is in test_vllm_preemptions.py; here, what it reads from each step's
statistics (vLLM's own classes) and when it declines to count.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from qerl.rollout.vllm.recompute import RecomputeCounter, attach


def test_only_the_preempted_sequences_count_and_prefix_cache_hits_are_not_recomputed():
    stats = pytest.importorskip("vllm.v1.metrics.stats")
    counter = RecomputeCounter()
    step = stats.SchedulerStats()
    step.prefix_cache_stats.record(num_tokens=300, num_hits=0, preempted=False)  # a new request: its first prefill
    step.prefix_cache_stats.record(num_tokens=232, num_hits=160, preempted=True)  # 160 tokens still cached
    step.prefix_cache_stats.record(num_tokens=40, num_hits=0, preempted=True)
    counter.record(step, None)
    later = stats.SchedulerStats()
    later.prefix_cache_stats.record(num_tokens=100, num_hits=96, preempted=True)
    counter.record(later, None, mm_cache_stats=None, engine_idx=0)
    counter.record(None, None)  # a step without scheduler statistics adds nothing
    assert (counter.tokens, counter.requests) == ((232 - 160) + 40 + (100 - 96), 3)
    counter.log(), counter.log_engine_initialized(), counter.record_sleep_state(1, 1)  # the rest of the interface
    assert (counter.tokens, counter.requests) == (116, 3)
    assert (counter.take(), counter.take()) == (116, 0)  # per read: what came since the last one
    counter.record(later, None)
    assert (counter.take(), counter.tokens) == (4, 120)


@pytest.mark.parametrize("engine", [
    SimpleNamespace(logger_manager=None, vllm_config=SimpleNamespace(cache_config=SimpleNamespace(
        enable_prefix_caching=True))),  # `disable_log_stats: true`: vLLM builds no logger manager
    SimpleNamespace(logger_manager=SimpleNamespace(stat_loggers=[]), vllm_config=SimpleNamespace(
        cache_config=SimpleNamespace(enable_prefix_caching=False))),  # no prefix cache: nothing recorded, no false 0
], ids=["stats-off", "prefix-caching-off"])
def test_no_counter_where_the_engine_would_not_feed_it(engine):
    assert attach(SimpleNamespace(llm_engine=engine)) is None
    assert engine.logger_manager is None or engine.logger_manager.stat_loggers == []


def test_the_counter_joins_the_engines_stat_loggers():
    loggers = ["prometheus"]
    engine = SimpleNamespace(logger_manager=SimpleNamespace(stat_loggers=loggers),
                             vllm_config=SimpleNamespace(cache_config=SimpleNamespace(enable_prefix_caching=True)))
    counter = attach(SimpleNamespace(llm_engine=engine))
    assert isinstance(counter, RecomputeCounter) and loggers == ["prometheus", counter]
