"""vLLM's asynchronous scheduling in the `VLLM` engine: the value vLLM settled on, and what qerl says about it.

With async scheduling vLLM schedules step n+1 and launches it while the GPU still runs step n (sampled tokens
reach the scheduler a step late; `vllm.v1.core.sched.async_scheduler.AsyncScheduler`, a batch queue of 2 in
`EngineCore.step_with_batch_queue`). Its `async_scheduling` setting is None by default, which vLLM 0.22.0 resolves
in `VllmConfig.__post_init__` (vllm/config/vllm.py:935-975) to True unless something there cannot take it: a
pooling model, speculative decoding other than EAGLE/MTP/ngram_gpu, or an executor without support (Ray's V1
executor). Every engine qerl builds on CUDA runs on an executor that supports it (`uni` in one process, `mp` for
tensor parallelism, `external_launcher` under DDP), so it is already on there. The CPU build turns it off
whatever is asked (vllm/platforms/cpu.py, after the check). An explicit True is refused where None would be
turned off (vllm/config/vllm.py:911-933).
"""
from __future__ import annotations

import warnings

KEY = "rollout.init_args.async_scheduling"


def resolved(llm) -> bool | None:
    """Whether `llm` (a `vllm.LLM`) schedules asynchronously, as vLLM settled it (None if it cannot be read)."""
    config = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)
    value = getattr(getattr(config, "scheduler_config", None), "async_scheduling", None)
    return None if value is None else bool(value)


def refusal(exc: BaseException, requested) -> str | None:
    """The message for vLLM refusing `async_scheduling=True` (None when `exc` is about something else)."""
    if requested is not True:
        return None
    said = next((line.strip() for line in str(exc).splitlines() if "async scheduling" in line.lower()), None)
    if said is None:
        return None
    said = said.removeprefix("Value error, ").split(" [type=")[0]
    return (f"vLLM refuses `{KEY}: true` with this engine's other settings (vLLM said: {said[:300]}). It schedules "
            "asynchronously only without speculative decoding or with EAGLE/MTP/draft-model/ngram_gpu drafts (and "
            "not with disable_padded_drafter_batch), and not on Ray's V1 executor. Remove the setting that clashes "
            f"from `rollout.init_args.engine_kwargs`, or set `{KEY}` to null (vLLM decides, and turns it off where "
            "it cannot) or false.")


def warn_if_overridden(llm, requested) -> None:
    """Warn when `async_scheduling` was asked for explicitly and vLLM settled on the other value."""
    got = resolved(llm)
    if requested is None or got is None or got == bool(requested):
        return
    why = " (the CPU build always schedules synchronously: vllm/platforms/cpu.py)" if not got else ""
    warnings.warn(f"VLLM: `{KEY}` is {str(bool(requested)).lower()} but vLLM runs the engine with it "
                  f"{'on' if got else 'off'}{why}.", stacklevel=3)
