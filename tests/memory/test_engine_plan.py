"""The vLLM engine in the start-up memory plan (qerl.memory.engine): byte counts of Qwen2.5-7B/32B shapes worked
out by hand, against what vLLM 0.22 reported on the H200, `gpu_memory_utilization: auto`, and the plan's two
phases with and without sleep mode on a real tiny policy."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from qerl.memory import MemoryPlanWarning, ModelShape, RunShape, estimate_memory, plan_for_module
from qerl.memory.engine import (
    GIB,
    EngineSettings,
    asleep_bytes,
    auto_utilization,
    engine_as_run,
    estimate_engine,
    one_sequence_kv,
    too_small_message,
    with_kv_cache,
)
from qerl.models import RandomInit
from qerl.rollout import HF, VLLM
from qerl.rollout.vllm.memory import CPU_UTILIZATION, wake_message

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def shape_of(preset: str) -> ModelShape:
    return ModelShape.from_config(RandomInit(config=preset).hf_config())


def nvfp4_engine(preset: str, seqs: int, length: int, **kw):
    settings = EngineSettings(seqs, length, packed_bits=4.5, lora_rank=32, lora_targets=TARGETS, **kw)
    return estimate_engine(shape_of(preset), settings)


def test_qwen7b_engine_bytes_by_hand():
    est = nvfp4_engine("qwen2.5-7b", 32, 1024)
    # 28 layers, hidden 3584, 4 kv heads x 128, intermediate 18944, vocab 152064 untied
    linear = 28 * (2 * 3584 * 3584 + 2 * 3584 * 512 + 3 * 3584 * 18944)
    assert linear == 6_525_288_448
    dense = 2 * 152064 * 3584 + 3584 + 28 * (3584 + 2 * 512 + 2 * 3584)  # embed + lm_head + final norm; biases, norms
    assert est.rows["vLLM weights"] == linear * 4.5 / 8 + dense * 2
    lora = 28 * 32 * (2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944))
    assert est.rows["vLLM LoRA slot"] == lora * 2
    assert est.kv_cache == 32 * 1024 * (2 * 28 * 4 * 128 * 2)  # every sequence at full length, bf16 K and V
    assert est.kv_cache_memory_gb() == est.kv_cache / 2**30
    # vLLM 0.22 on the H200: sleep mode backed up 5.74 GiB of this engine's weights to the CPU
    served = (est.rows["vLLM weights"] + est.rows["vLLM LoRA slot"]) / GIB
    assert served == pytest.approx(5.74, rel=0.05)
    # ... and freed 40.14 GiB of the 0.3 x 140 GiB budget: 1.86 GiB went to profiling, graphs and workspaces,
    # which the allowance covers (never more than twice over)
    kept = 0.3 * 140 - 40.14
    allowance = est.rows["vLLM activations + graphs"] / GIB
    assert kept <= allowance <= 2 * kept


def test_qwen32b_engine_bytes_by_hand():
    est = nvfp4_engine("qwen2.5-32b", 8, 776)  # the measured step: 8 x (256 prompt + 512 new + 8)
    linear = 64 * (2 * 5120 * 5120 + 2 * 5120 * 1024 + 3 * 5120 * 27648)
    dense = 2 * 152064 * 5120 + 5120 + 64 * (5120 + 2 * 1024 + 2 * 5120)
    assert est.rows["vLLM weights"] == linear * 4.5 / 8 + dense * 2
    assert est.kv_cache == 8 * 776 * (2 * 64 * 8 * 128 * 2)
    served = (est.rows["vLLM weights"] + est.rows["vLLM LoRA slot"]) / GIB
    assert served == pytest.approx(20.1, rel=0.05)  # "weights backed up to CPU 20.1 GiB" on the H200
    # the run used gpu_memory_utilization 0.2 of ~140 GiB; auto asks for less, and never below the need
    util = auto_utilization(est.need, 140 * GIB)
    assert est.need <= util * 140 * GIB < est.need + 0.01 * 140 * GIB and util <= 0.2


def test_dense_float32_and_tensor_parallel_engines():
    shape = shape_of("qwen2.5-7b")
    dense = estimate_engine(shape, EngineSettings(4, 512, dtype_bytes=4))
    params = shape.layer_linear_params() * shape.layers + shape.embedding_params() + \
        shape.layer_small_params() * shape.layers
    assert dense.rows["vLLM weights"] == params * 4 and dense.rows["vLLM LoRA slot"] == 0
    assert dense.kv_cache == 4 * 512 * 2 * 28 * 512 * 4
    split = estimate_engine(shape, EngineSettings(4, 512, dtype_bytes=4, tensor_parallel_size=2))
    assert split.rows["vLLM weights"] == dense.rows["vLLM weights"] / 2 and split.kv_cache == dense.kv_cache / 2
    fixed = estimate_engine(shape, EngineSettings(4, 512, kv_cache_bytes=3 * GIB, cuda_graphs=False))
    assert fixed.kv_cache == 3 * GIB and fixed.with_budget(0.9, 100 * GIB) is fixed


def test_auto_utilization_is_need_over_total_rounded_up():
    est = nvfp4_engine("qwen2.5-7b", 128, 4608)
    total = 100 * GIB
    util = auto_utilization(est.need, total)
    assert util == math.ceil(est.need / total * 100) / 100
    runs, got = engine_as_run(est, "auto", total)
    assert got == util and runs.kv_cache >= est.kv_cache  # the rounding goes to the KV cache
    assert runs.kv_cache == pytest.approx(util * total - est.fixed)
    assert auto_utilization(50 * GIB, 100 * GIB) == 0.5  # exact shares are not rounded up by float error
    # less free than the need: as much as is free (minus 8% of the card, the plan's headroom), and the cache
    # holds fewer full-length sequences
    runs, got = engine_as_run(est, "auto", total, free=30 * GIB)
    assert got == 0.22 and one_sequence_kv(est) < runs.kv_cache < est.kv_cache
    assert engine_as_run(est, "auto", 10 * GIB, free=5 * GIB)[1] == 0.4  # at least 1 GiB stays free
    runs, got = engine_as_run(est, 0.5, total)  # a number: vLLM fills that budget with KV cache
    assert got == 0.5 and runs.need == pytest.approx(0.5 * total)


def test_a_budget_without_room_for_one_sequence_is_one_line_saying_what_to_change():
    """The same text warns in the start-up plan and stops `VLLM.setup`; auto and a number get different advice."""
    from dataclasses import replace

    est = nvfp4_engine("qwen2.5-32b", 32, 9216)
    fits, util = engine_as_run(est, "auto", 140 * GIB, free=100 * GIB)
    assert too_small_message(est, fits, util, 140 * GIB, 100 * GIB) is None
    starved, util = engine_as_run(est, "auto", 140 * GIB, free=32 * GIB)
    text = too_small_message(est, starved, util, 140 * GIB, 32 * GIB)
    assert "gpu_memory_utilization` auto" in text and "vLLM will refuse to start" in text
    assert "capped by what is free (34.4 GB" in text and "max_model_len" in text and "\n" not in text
    low = replace(est, settings=replace(est.settings, utilization=0.05))
    starved, util = engine_as_run(low, 0.05, 140 * GIB)
    text = too_small_message(low, starved, util, 140 * GIB, None)
    assert "gpu_memory_utilization` 0.05 (0.05)" in text and text.endswith("or free GPU memory.")
    assert f"Raise it (the engine needs {auto_utilization(est.need, 140 * GIB):.2f}" in text



def test_an_engine_that_cannot_wake_after_the_update_says_what_it_needed_and_what_to_lower():
    gib = 2**30
    said = RuntimeError("CUDA Error: out of memory at /workspace/csrc/cumem_allocator.cpp:139\nmore")
    message = wake_message(said, 0.24, 80 * gib, 3 * gib, 61 * gib)
    assert "waking up after the update" in message and "19.2 GiB" in message and "0.24 of 80.0 GiB" in message
    assert "3.0 GiB were free" in message and "held 61.0 GiB" in message
    assert "model.micro_batch_size" in message and "cumem_allocator.cpp:139)" in message and "more" not in message

def test_the_peak_is_the_larger_phase_and_sleep_mode_frees_training():
    shape = shape_of("qwen2.5-7b")
    run = RunShape(rows=32, prompt_len=256, response_len=1024, micro_batch=8)
    policy = estimate_memory(shape, run, quant_bits=4.5)
    static, training = sum(policy.static.values()), sum(policy.training.values())
    for sleep in (True, False):
        engine = nvfp4_engine("qwen2.5-7b", 32, 1280, sleep_mode=sleep)
        est = estimate_memory(shape, run, quant_bits=4.5, engine=engine)
        assert est.rollout == {} and est.engine == engine.rows  # the engine decodes, not the policy
        assert est.rollout_peak == pytest.approx(static + engine.need)
        held = asleep_bytes(engine.settings) if sleep else engine.need
        assert est.training_peak == pytest.approx(static + training + held)
        assert est.peak == max(est.rollout_peak, est.training_peak)
        assert "vLLM engine total" in est.table() and "engine/vLLM KV cache" in est.as_dict()
    assert asleep_bytes(engine.settings) < 1.01 * GIB


@pytest.fixture(scope="module")
def planned_module():
    from tests.rl_helpers import tiny_module

    module = tiny_module(rollout=HF(), micro_batch_size="auto")
    module.setup("fit")  # the HF backend: no engine starts; the plan below is made for a VLLM backend
    return module


@pytest.mark.parametrize("sleep", [True, False])
def test_module_plan_counts_the_vllm_engine(planned_module, sleep):
    from tests.rl_helpers import tiny_data

    module = planned_module
    module.micro_batch_size = "auto"
    module.rollout = VLLM(gpu_memory_utilization="auto", max_model_len=64, max_num_seqs=8, enable_sleep_mode=sleep)
    lines: list[str] = []
    total = 8 * GIB
    plan = plan_for_module(module, tiny_data(), budget=7 * GIB, echo=lines.append, total=total, free=7 * GIB)
    need = module.rollout.engine_estimate(module.model, "cuda")
    assert need.settings.dtype_bytes == 4 and need.settings.lora_rank == 8  # float32 policy; rank 4 -> vLLM's 8
    assert need.kv_cache == 8 * 64 * 2 * 2 * (2 * 16) * 4  # K and V, 2 layers, 2 kv heads x head_dim 16, float32
    assert plan.engine_utilization == auto_utilization(need.need, total)
    est = plan.estimate
    assert est.engine["vLLM KV cache"] == pytest.approx(plan.engine_utilization * total - need.fixed)
    engine_total = sum(est.engine.values())
    assert est.engine_training == (asleep_bytes(need.settings) if sleep else engine_total)
    assert est.peak == max(sum(est.static.values()) + engine_total,
                           sum(est.static.values()) + sum(est.training.values()) + est.engine_training)
    assert "vLLM engine total" in lines[-2] and f"auto -> {plan.engine_utilization:.2f}" in lines[-1]
    assert plan.micro_batch_size == 8  # fits: all rows at once
    module.rollout.gpu_memory_utilization = 0.01  # a number too small for one sequence: vLLM would refuse
    with pytest.warns(MemoryPlanWarning, match=r"gpu_memory_utilization` 0.01 .*vLLM will refuse to start"):
        plan_for_module(module, tiny_data(), budget=7 * GIB, echo=lines.append, total=total, free=7 * GIB)
    module.rollout.gpu_memory_utilization = "auto"
    with pytest.warns(MemoryPlanWarning, match=r"phase is the peak.*gpu_memory_utilization.*max_num_seqs") as got:
        plan_for_module(module, tiny_data(), budget=0.5 * GIB, echo=lines.append, total=total, free=7 * GIB)
    said = str(got[0].message)
    assert ("rollout (vLLM engine awake) phase" in said) == sleep  # without sleep mode training holds it too
    assert ("enable_sleep_mode" in said) != sleep


def test_gpu_memory_utilization_values(planned_module):
    assert VLLM(gpu_memory_utilization="auto").gpu_memory_utilization == "auto"
    assert VLLM(gpu_memory_utilization=0.45).gpu_memory_utilization == 0.45
    for bad in ("most", 0, 1.5, True):
        with pytest.raises(ValueError, match=r"`rollout.init_args.gpu_memory_utilization`=.* must be \"auto\" or"):
            VLLM(gpu_memory_utilization=bad)
    # on the CPU build "auto" keeps the old fraction of RAM (the KV cache is kv_cache_memory_gb there)
    assert VLLM(gpu_memory_utilization="auto")._utilization(planned_module.model) == CPU_UTILIZATION
    assert VLLM(gpu_memory_utilization=0.45)._utilization(planned_module.model) == 0.45


def test_no_engine_rows_without_a_cuda_device_or_a_vllm_backend(planned_module):
    from tests.rl_helpers import tiny_data

    module = planned_module
    module.rollout = VLLM(gpu_memory_utilization="auto", max_model_len=64, max_num_seqs=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemoryPlanWarning)
        if not torch.cuda.is_available():
            assert plan_for_module(module, tiny_data(), echo=lambda *_: None).engine is None
        module.rollout = HF()
        assert plan_for_module(module, tiny_data(), budget=8 * GIB, echo=lambda *_: None, total=8 * GIB).engine is None


def test_sleep_mode_auto_sleeps_only_when_the_awake_engine_would_not_fit(planned_module):
    from tests.rl_helpers import tiny_data

    module, peaks = planned_module, {}
    module.micro_batch_size = 8
    for sleep in (True, False):
        module.rollout = VLLM(gpu_memory_utilization="auto", max_model_len=64, max_num_seqs=8, enable_sleep_mode=sleep)
        peaks[sleep] = plan_for_module(module, tiny_data(), budget=7 * GIB, echo=lambda *_: None, total=8 * GIB,
                                       free=7 * GIB).estimate.peak
    assert peaks[True] < peaks[False]  # asleep, the training phase holds only the engine's graphs and workspace
    for budget, sleeps in ((peaks[False] * 1.01, False), ((peaks[True] + peaks[False]) / 2, True)):
        module.rollout = VLLM(gpu_memory_utilization="auto", max_model_len=64, max_num_seqs=8, enable_sleep_mode="auto")
        assert module.rollout.sleep_mode  # undecided (no plan yet): on, the setting that fits more
        lines: list[str] = []
        plan = plan_for_module(module, tiny_data(), budget=budget, echo=lines.append, total=8 * GIB, free=7 * GIB)
        assert plan.engine_sleep is sleeps and plan.estimate.peak == pytest.approx(peaks[sleeps])
        assert plan.engine.settings.sleep_mode is sleeps
        assert f"enable_sleep_mode auto -> {'on' if sleeps else 'off'}" in lines[0]
        module.rollout.resolved_sleep_mode = plan.engine_sleep  # what QeRLModule.setup does before the engine starts
        assert module.rollout.sleep_mode is sleeps


def test_sleep_mode_auto_for_32b_on_an_80_gb_card_matches_the_h200_rows():
    """32B NVFP4 with vLLM under a 79 GiB card (H200, 2026-12-02): 16 x 2,048 needed sleep mode (the card held 76.9
    GiB after training with the engine asleep); 8 x 512 held 52.5 GiB generating, room for the engine awake."""
    from dataclasses import replace

    from qerl.memory.startup import decide_sleep, with_sleep

    shape, said = shape_of("qwen2.5-32b"), []
    for rows, new, sleeps in ((8, 512, False), (16, 2048, True)):
        need = nvfp4_engine("qwen2.5-32b", rows, 256 + new + 8, sleep_mode=True)
        runs, _ = engine_as_run(need, "auto", 79 * GIB, 54 * GIB)
        run = RunShape(rows=rows, prompt_len=256, response_len=new, micro_batch=rows)
        sleep, need_as, runs_as = decide_sleep(shape, run, 0.95 * 79 * GIB, 4.5, 2, need, runs, True, said.append)
        assert sleep is sleeps and need_as.settings.sleep_mode is sleeps and runs_as.rows == runs.rows
        awake = estimate_memory(shape, replace(run, micro_batch=rows), 4.5, engine=with_sleep(runs, False))
        assert (awake.peak > 0.95 * 79 * GIB) is sleeps
    assert "auto -> off" in said[0] and "auto -> on" in said[1]


def test_enable_sleep_mode_values():
    assert VLLM(enable_sleep_mode="auto").sleep_mode and not VLLM().sleep_mode and VLLM(enable_sleep_mode=True).sleep_mode
    for bad in ("sometimes", 1, None):
        with pytest.raises(ValueError, match=r"`rollout.init_args.enable_sleep_mode`=.* must be true, false or \"auto\""):
            VLLM(enable_sleep_mode=bad)


def test_an_fp8_kv_cache_holds_half_the_bytes_and_reaches_vllm():
    bf16 = nvfp4_engine("qwen2.5-7b", 128, 4352)
    fp8 = nvfp4_engine("qwen2.5-7b", 128, 4352, kv_dtype_bytes=1)
    assert fp8.kv_cache == bf16.kv_cache / 2 == 128 * 4352 * (2 * 28 * 4 * 128 * 1)
    assert fp8.rows["vLLM weights"] == bf16.rows["vLLM weights"]  # only the cache changes
    backend = VLLM(kv_cache_dtype="fp8")
    assert backend.engine_kwargs["kv_cache_dtype"] == "fp8"
    assert "kv_cache_dtype" not in VLLM().engine_kwargs  # "auto": vLLM's own default
    with pytest.raises(ValueError, match="kv_cache_dtype 'int4'"):
        VLLM(kv_cache_dtype="int4")


def test_training_under_the_rollout_keeps_the_engine_awake_with_a_cut_kv_cache():
    """H100 80GB, 2026-12-07: at the 7B GSM8K shape `--vllm-sleep auto` put the engine to sleep (awake through
    training the plan's peak was 95.3 GB of a 78.7 GB budget), so the rows with `--train-during-rollout` trained
    nothing under the rollout (`groups_under_rollout` 0). Training under the rollout needs the engine awake: the
    plan keeps it so and cuts the KV cache (32.2 GB for 128 x 4,360 tokens) by what did not fit."""
    from qerl.memory.startup import decide_sleep

    shape, said = shape_of("qwen2.5-7b"), []
    need = nvfp4_engine("qwen2.5-7b", 128, 4360, sleep_mode=True)
    runs, _ = engine_as_run(need, "auto", 85.017e9, 80e9)
    run, budget = RunShape(rows=128, prompt_len=256, response_len=4096, micro_batch=16), 78.71e9
    assert decide_sleep(shape, run, budget, 4.5, 2, need, runs, echo=said.append)[0]  # without it: asleep
    sleep, need_as, runs_as = decide_sleep(shape, run, budget, 4.5, 2, need, runs, echo=said.append, stay_awake=True)
    assert not sleep and not runs_as.settings.sleep_mode and not need_as.settings.sleep_mode
    assert runs_as.settings.kv_cache_bytes == runs_as.kv_cache == need_as.kv_cache < 0.6 * runs.kv_cache
    assert runs_as.kv_cache % 2**20 == 0  # whole MiB, as kv_cache_memory_gb passes it to vLLM
    awake = estimate_memory(shape, run, 4.5, engine=runs_as)
    assert budget - 0.02 * GIB < awake.peak <= budget  # everything the budget leaves, no more
    assert runs_as.kv_cache > 50 * one_sequence_kv(need)  # the GSM8K draw's 95k tokens fit without preemption
    assert "auto -> off, KV cache cut from 32." in said[-1] and "holds 60 of the 128" in said[-1]
    too_small = estimate_memory(shape, run, 4.5, engine=with_kv_cache(runs, 0.0)).peak
    sleep, _, runs_as = decide_sleep(shape, run, too_small, 4.5, 2, need, runs, echo=said.append, stay_awake=True)
    assert sleep and runs_as.settings.kv_cache_bytes is None and "cannot keep the engine awake" in said[-2]
    own = with_kv_cache(need, runs.kv_cache)  # the recipe's kv_cache_memory_gb: never cut
    sleep, _, runs_as = decide_sleep(shape, run, budget, 4.5, 2, own, own, echo=said.append, stay_awake=True)
    assert sleep and runs_as.kv_cache == runs.kv_cache and "kv_cache_memory_gb` fixes the KV cache" in said[-2]


def test_module_plan_hands_the_cut_kv_cache_to_the_engine(planned_module):
    from tests.rl_helpers import tiny_data

    module = planned_module
    module.micro_batch_size = 8
    kw = {"gpu_memory_utilization": "auto", "max_model_len": 4096, "max_num_seqs": 8, "enable_sleep_mode": "auto"}
    module.rollout = VLLM(**kw)
    roomy = plan_for_module(module, tiny_data(), budget=7 * GIB, echo=lambda *_: None, total=8 * GIB, free=7 * GIB)
    assert roomy.engine_sleep is False and roomy.engine_kv_cache_gb is None
    budget = roomy.estimate.peak - roomy.engine.kv_cache / 2
    module.train_during_rollout = True
    try:
        lines: list[str] = []
        plan = plan_for_module(module, tiny_data(), budget=budget, echo=lines.append, total=8 * GIB, free=7 * GIB)
    finally:
        module.train_during_rollout = False
    assert plan.engine_sleep is False and plan.estimate.peak <= budget
    assert plan.engine_kv_cache_gb == pytest.approx(plan.engine.kv_cache / GIB)
    assert plan.engine_kv_cache_gb < roomy.engine.kv_cache / GIB and "KV cache cut" in lines[0]
    assert plan.engine_utilization <= roomy.engine_utilization  # (in hundredths of the card)
    module.rollout.resolved_kv_cache_gb = plan.engine_kv_cache_gb  # what QeRLModule.setup does
    assert module.rollout.kv_cache_gb == plan.engine_kv_cache_gb
    assert module.rollout.engine_estimate(module.model, "cuda").kv_cache == pytest.approx(plan.engine.kv_cache)
    module.rollout = VLLM(kv_cache_memory_gb=1.5, **kw)
    module.rollout.resolved_kv_cache_gb = 0.5
    assert module.rollout.kv_cache_gb == 1.5  # the recipe's own setting wins
