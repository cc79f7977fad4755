"""`max_num_seqs: auto` (qerl.rollout.vllm.num_seqs): the engine decodes every completion of a rollout call at once,
the pick reaches the memory plan's KV cache and the CUDA-graph capture size, and bad values name the key. The
engine itself taking the pick is checked in test_vllm_preemptions.py (one engine a file)."""
from __future__ import annotations

import pytest

from qerl.memory.engine import GIB
from qerl.rollout import VLLM
from qerl.rollout.vllm.num_seqs import AUTO_MAX_SEQS, auto_num_seqs, describe_pick


def test_auto_is_every_completion_of_a_rollout_call_capped():
    assert auto_num_seqs(128) == 128  # the 7B GSM8K and 32B DAPO recipes: 16 x 8 and 8 x 16
    assert auto_num_seqs(1000) == AUTO_MAX_SEQS == 256
    assert auto_num_seqs(0) == 1
    # a tensor-parallel engine shared by 2 ranks under data parallelism generates both ranks' completions
    assert auto_num_seqs(64, tensor_parallel_size=2, world_size=4) == 128
    assert auto_num_seqs(64, tensor_parallel_size=2, world_size=1) == 64  # one process: vLLM's own workers


def test_the_backend_takes_the_pick_before_its_engine_starts():
    backend = VLLM(max_num_seqs="auto")
    assert backend.num_seqs == AUTO_MAX_SEQS  # unplanned (no training module): vLLM's default
    assert backend.engine_kwargs["compilation_config"]["max_cudagraph_capture_size"] is None  # filled in at setup
    line = backend.plan_rows(128)
    assert backend.resolved_max_num_seqs == backend.num_seqs == 128
    assert line.startswith("qerl: max_num_seqs auto -> 128 (128 completions a rollout call;")
    assert "capped at 256" in VLLM(max_num_seqs="auto").plan_rows(512)
    assert describe_pick(128, 64, 2, 4).startswith("qerl: max_num_seqs auto -> 128 (64 completions a rank x 2 ranks")
    fixed = VLLM(max_num_seqs=24)
    assert fixed.plan_rows(128) is None and fixed.num_seqs == 24
    assert fixed.engine_kwargs["compilation_config"]["max_cudagraph_capture_size"] == 24


@pytest.mark.parametrize("bad", ["many", 0, -4, True, 2.5])
def test_a_bad_max_num_seqs_names_the_key(bad):
    with pytest.raises(ValueError, match=r"`rollout.init_args.max_num_seqs`=.* must be \"auto\" .* or an int >= 1"):
        VLLM(max_num_seqs=bad)


def test_the_memory_plan_sizes_the_kv_cache_for_the_picked_sequences():
    from qerl.memory import plan_for_module
    from qerl.memory.startup import rollout_rows
    from qerl.rollout import HF
    from tests.rl_helpers import tiny_data, tiny_module

    module = tiny_module(rollout=HF())
    module.setup("fit")  # builds the policy; the HF backend starts no engine
    data = tiny_data(batch_size=3)
    module.rollout = VLLM(gpu_memory_utilization="auto", max_model_len=64, max_num_seqs="auto")
    rows = rollout_rows(module, data)
    assert rows == 3 * module.sampling.n
    assert module.rollout.plan_rows(rows).startswith(f"qerl: max_num_seqs auto -> {rows} ")
    lines: list[str] = []
    plan = plan_for_module(module, data, budget=7 * GIB, echo=lines.append, total=8 * GIB, free=7 * GIB)
    per_token = 2 * 2 * (2 * 16) * 4  # K and V, 2 layers, 2 kv heads x head_dim 16, float32 (the tiny policy)
    assert plan.engine.settings.max_num_seqs == rows
    assert module.rollout.engine_estimate(module.model, "cuda").kv_cache == rows * 64 * per_token
    assert f"KV cache {rows} seqs x 64 tokens" in lines[-1]
