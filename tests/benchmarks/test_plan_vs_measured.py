"""benchmarks/plan_vs_measured.py: the engine-aware memory plan of a step.py vLLM row against what the card held."""
from __future__ import annotations

import os
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import plan_vs_measured as pvm
import step

RESULTS = os.path.join(ROOT, "benchmarks", "results")
GSM8K = os.path.join(RESULTS, "step-NVIDIA-H100-80GB-HBM3-2026-12-06-gsm8k-shape.json")


@pytest.mark.parametrize(("quantizer", "served_as", "sleep", "kv_gib", "kv_dtype"), [
    ("NVFP4", "nvfp4 (compressed-tensors)", "auto", None, "auto"),
    (None, "bfloat16", "off", 2.0, "fp8"),
])
def test_row_settings_are_what_the_vllm_backend_estimates_for_step_pys_engine(quantizer, served_as, sleep, kv_gib,
                                                                              kv_dtype):
    from qerl.lora.apply import apply_lora
    from qerl.models.random_init import RandomInit
    from qerl.rollout.vllm import VLLM

    # widths vLLM's Marlin FP4 kernels take, so the NVFP4 base is served packed as on the H100
    loader = RandomInit("tiny", overrides={"hidden_size": 128, "intermediate_size": 256}, tokenizer="bytes")
    policy, _ = loader.load(quantizer=quantizer, dtype="bfloat16", device="cpu")
    policy = apply_lora(policy, rank=32, alpha=64.0)  # as step.build
    args = types.SimpleNamespace(vllm_util="auto", vllm_sleep=sleep, vllm_no_compile=True, vllm_kv_gib=kv_gib,
                                 vllm_kv_dtype=kv_dtype, mismatch="update", vllm_lora_configs=None)
    backend = VLLM(**step.vllm_settings(16, 64, args))
    need = backend.engine_estimate(policy, "cuda")
    row = {"batch": 16, "new": 64, "gpus": 1, "served_as": served_as,
           "vllm": {"gpu_memory_utilization": "auto", "kv_cache_memory_gb": kv_gib, "kv_cache_dtype": kv_dtype,
                    "slept": backend.sleep_mode}}
    assert pvm.row_settings(row, step.PROMPT) == need.settings
    assert (need.settings.packed_bits is not None) == (quantizer is not None)


def test_the_committed_7b_gsm8k_rows_plan_and_measurements():
    import json

    total = 79.18 * 2**30  # torch's "total capacity" on these H100s: 85.02 GB
    with open(GSM8K) as f:
        nvfp4, bf16 = json.load(f)["rows"]
    awake, asleep = pvm.reconstruct(nvfp4, 256, total), pvm.reconstruct(bf16, 256, total)
    # without the engine the rebuilt plan is the number step.py recorded then: same shape, run and bits
    assert (awake["est_policy_peak_gb"], asleep["est_policy_peak_gb"]) == (nvfp4["est_peak_gb"], bf16["est_peak_gb"])
    # the engine's need gives the utilizations the rows resolved (0.49, 0.60) and the printed "needs 50.80 GB"
    assert (awake["need_gb"], asleep["need_gb"]) == (41.42, 50.80)
    assert (awake["est_phases_gb"], asleep["est_phases_gb"]) == (
        {"rollout_peak": 48.80, "training_peak": 73.00}, {"rollout_peak": 67.53, "training_peak": 41.79})
    # the sleep decision: awake through training 73.0 GB fits the ~79.5 GB budget, 91.73 GB (printed "91.7") does not
    assert (awake["awake_peak_gb"], asleep["awake_peak_gb"]) == (73.00, 91.73)
    assert (awake["est_peak_gb"], asleep["est_peak_gb"]) == (73.00, 67.53)

    got = pvm.compare({**awake["est_phases_gb"], "peak": awake["est_peak_gb"]}, pvm.measured(nvfp4), False)
    assert got["phases"]["rollout"]["off_card_pct"] == 0.9  # 48.80 vs 45.05 GiB = 48.37 GB
    assert got["phases"]["training"]["off_card_pct"] == -6.3  # 73.00 vs 72.55 GiB = 77.90 GB
    assert got["phases"]["training"]["off_torch_pct"] == 5.5  # 73.00 vs torch's 69.20 GB
    assert (got["est_vs_peak"], got["est_vs_card"]) == (1.055, 0.937)
    assert got["est_vs_peak_against"].startswith("torch's peak")

    got = pvm.compare({**asleep["est_phases_gb"], "peak": asleep["est_peak_gb"]}, pvm.measured(bf16), True)
    assert got["phases"]["rollout"]["off_card_pct"] == 0.6  # 67.53 vs 62.54 GiB = 67.15 GB
    assert got["phases"]["training"]["off_card_pct"] == -14.2  # 41.79 vs 45.38 GiB = 48.73 GB
    # torch's 87.89 GB (above the 85.0 GB card) books the sleeping engine: reported, never compared
    assert got["phases"]["training"]["torch_peak_gb"] == 87.89 and got["phases"]["training"]["off_torch_pct"] is None
    assert got["est_vs_peak"] == got["est_vs_card"] == 1.006 and got["est_vs_peak_against"].startswith("the card")

    # the update alone: torch grew by the same 23.55 GB in both rows, 4.1% under the plan; the card by 29.53 GB
    for row, plan in ((nvfp4, awake), (bf16, asleep)):
        update = pvm.update_footprint(plan["estimate"], row)
        assert round(update["torch_gb"], 2) == 23.55 and update["off_torch_pct"] == 4.1
    assert round(pvm.update_footprint(awake["estimate"], nvfp4)["card_gb"], 2) == 29.53
    assert pvm.update_footprint(asleep["estimate"], bf16)["card_gb"] is None  # no reading with the engine asleep


def test_compare_takes_the_first_rollout_and_copes_with_missing_readings():
    row = {"device_used_gib_rollout": 60.0, "device_used_gib_first_rollout": 40.0,
           "device_used_gib_after_train": None, "peak_gb": None}
    seen = pvm.measured(row)
    assert seen["card_rollout"] == pytest.approx(40.0 * 2**30 / 1e9)  # not the later step's, which holds the cache
    got = pvm.compare({"rollout_peak": 43.0, "training_peak": 50.0, "peak": 50.0}, seen, False)
    assert got["phases"]["rollout"]["off_card_pct"] == 0.1  # 43.0 vs 42.95 GB
    assert got["phases"]["training"]["off_card_pct"] is None and got["est_vs_peak"] is None
    assert got["est_vs_card"] == round(50.0 / (40.0 * 2**30 / 1e9), 3)


def test_a_packed_rows_plan_at_its_drawn_lengths_is_within_a_few_percent_of_the_card():
    """2026-12-07 H100 GSM8K-shape rows: the start-up plan covers every completion at the cap (one group packed:
    256 + 8 x 4,096 = 33,024 positions); the step's longest group drew 10,385, and the plan rebuilt there is within
    1% (NVFP4, engine awake) and 5% (bf16, engine asleep) of what the card held after training."""
    import json

    def row(tag):
        path = os.path.join(RESULTS, f"step-NVIDIA-H100-80GB-HBM3-2026-12-07-{tag}.json")
        with open(path) as f:
            return json.load(f)["rows"][0]

    total = 85.017e9
    nvfp4, bf16, rows = row("gsm8k-nvfp4-packgroups"), row("gsm8k-bf16-packgroups"), row("gsm8k-nvfp4")
    assert pvm.longest_micro_batch(nvfp4, 256) == 256 + 388 + 4096 + 147 + 449 + 4096 + 136 + 306 + 511 == 10385
    assert pvm.longest_micro_batch(rows, 256) == 8 * (256 + 4096)  # a padded micro-batch with one capped row
    drawn = pvm.drawn_plan(nvfp4, 256, total)
    assert (drawn["longest_positions"], drawn["worst_positions"]) == (10385, 33024)
    assert (drawn["training_peak_gb"], drawn["worst_training_peak_gb"]) == (56.88, 71.53)
    assert pvm.off_pct(drawn["training_peak_gb"], pvm.measured(nvfp4)["card_after_train"]) == 0.6
    drawn = pvm.drawn_plan(bf16, 256, total)
    assert (drawn["training_peak_gb"], drawn["worst_training_peak_gb"]) == (25.67, 40.33)
    assert pvm.off_pct(drawn["training_peak_gb"], pvm.measured(bf16)["card_after_train"]) == -5.1
    # the padded row hit its worst case: nothing to add to the report
    assert pvm.drawn_text(rows, 256, total) == ""
    assert "56.88 GB against the card's 56.55 GB (+0.6%)" in pvm.drawn_text(nvfp4, 256, total)
    assert pvm.drawn_plan(dict(nvfp4, lengths_drawn=None), 256, total) is None
