"""benchmarks/train_profile.py and step.py `--profile-train`: the update's time by family, from a real profiled step."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import train_profile
from test_step import run_row


def test_operators_and_kernels_fall_into_the_families_that_explain_an_update():
    ops = {"aten::mm": "matmul", "aten::_efficient_attention_backward": "attention",
           "aten::_scaled_dot_product_efficient_attention": "attention", "aten::logsumexp": "log-probs (LM head chunks)",
           "aten::_to_copy": "copies + casts", "aten::mul": "elementwise", "aten::_foreach_add_": "optimizer + clipping",
           "QuantLinearFunction": "qerl 4-bit layers", "aten::silu_backward": "activation", "aten::rsqrt": "norms",
           "something_new": "other"}
    assert {name: train_profile.family(name) for name in ops} == ops
    kernels = {"fmha_cutlassB_bf16_aligned_64x64_k128_sm80": "attention", "_dequant_kernel": "qerl Triton",
               "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "gemm",
               "nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTT": "gemm",
               "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float>>": "softmax / reductions",
               "Memcpy DtoD (Device -> Device)": "copies",
               "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>":
                   "elementwise"}
    assert {k: train_profile.family(k, train_profile.KERNEL_FAMILIES) for k in kernels} == kernels


def test_summary_before_any_profile_says_what_to_do():
    with pytest.raises(RuntimeError, match="nothing was profiled"):
        train_profile.TrainProfile("cpu").summary()


def test_profile_train_adds_one_profiled_update_after_the_timed_steps(tmp_path, monkeypatch):
    row, _, _, generating = run_row(tmp_path, monkeypatch, "--profile-train")
    assert row["status"] == "ok" and len(generating) == 3  # two timed steps and the profiled one
    prof = row["train_profile"]
    assert prof["time"] == "cpu" and 0 < prof["wall_s"] <= prof["train_s"] + 0.05
    assert 0 < prof["busy_s"] <= prof["wall_s"] * 1.05  # own CPU times of the ops, inside the profiled block
    assert prof["padded_positions"] == row["padded_positions"]
    families = prof["kernel_families_s"]
    assert families.get("matmul", 0) > 0 and families.get("optimizer + clipping", 0) > 0
    assert abs(sum(families.values()) - prof["busy_s"]) < 0.01  # every op counted once
    assert prof["top_ops"] and all(op["s"] > 0 and op["calls"] >= 1 for op in prof["top_ops"])
    assert [op["s"] for op in prof["top_ops"]] == sorted((op["s"] for op in prof["top_ops"]), reverse=True)
