"""benchmarks/fit_recipe.py on the CPU: the 7B and 32B recipes fit 2 steps on a tiny random policy, checkpoint
every step and resume for a third, each phase its own `qerl fit` process - the device commands at a tiny shape."""
from __future__ import annotations

import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import fit_recipe  # the script, imported as test_learning.py imports learning.py

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
#: what the device commands keep from the recipe, made small: 8 new tokens, 2 prompts a step, float32 on the CPU
CPU = ["--trainer.accelerator=cpu", "--model.sampling.max_new_tokens=8", "--data.init_args.batch_size=2",
       "--model.dtype=float32"]


@pytest.fixture(autouse=True)
def one_thread_children(monkeypatch):
    """The `qerl fit` children on one torch thread (tiny matmuls on a busy 2-core machine: ~5x faster)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def fit_and_resume(tmp_path, recipe: str, extra: list[str], *options: str) -> dict:
    summary = fit_recipe.main([os.path.join(REPO, recipe), "--shape", "tiny", "--root", str(tmp_path / "root"),
                               "--out", str(tmp_path / "out"), "--steps", "2", "--resume-steps", "1", *options,
                               "--", *CPU, *extra])
    fit, resume = summary["phases"]
    assert [p["exit"] for p in summary["phases"]] == [0, 0]
    assert [r["global_step"] for r in fit["steps"]] == [1, 2] and [r["global_step"] for r in resume["steps"]] == [3]
    assert [(c["file"], c["global_step"]) for c in fit["checkpoints"] if c["file"] == "last.ckpt"] == [("last.ckpt", 2)]
    last = os.path.join(resume["start"]["log_dir"], "checkpoints", "last.ckpt")
    assert os.path.isfile(last) and os.path.getsize(last) > 0
    assert [c["global_step"] for c in resume["checkpoints"] if c["file"] == "last.ckpt"] == [3]
    start = resume["start"]
    assert start["global_step"] == start["ckpt_global_step"] == 2 and start["ckpt_path"].endswith("last.ckpt")
    assert start["optimizer_step"] == start["ckpt_optimizer_step"] == 2 and start["scheduler_step"] == 2
    assert start["adapter_equal"] and start["adapter_max_abs_diff"] == 0.0 and start["adapter_params"] > 0
    assert start["adapter_norm"] == fit["steps"][-1]["adapter_norm"]  # the resumed adapter is the one fit left
    for record in fit["steps"] + resume["steps"]:
        metrics = record["metrics"]
        assert all(math.isfinite(v) for v in metrics.values() if v is not None)
        assert metrics["perf/step_s"] > 0 and metrics["perf/peak_mem"] > 0 and metrics["rollout/length_mean"] > 0
    lrs = [r["metrics"]["train/lr"] for r in fit["steps"] + resume["steps"]]
    assert lrs == pytest.approx([1e-6, 2e-6, 3e-6])  # the recipe's warmup (10 steps to 1e-5) goes on after the resume
    assert summary["ok"] and all(all(p["checks"].values()) for p in summary["phases"])
    tag = recipe.removeprefix("recipes/").removesuffix(".yaml").replace("/", "-")
    assert {f"fit-{tag}.json", f"{tag}-fit.log", f"{tag}-fit.jsonl", f"{tag}-resume.jsonl"} <= set(
        os.listdir(tmp_path / "out"))
    return summary


def test_grpo_7b_recipe_fits_checkpoints_and_resumes(tmp_path):
    # the bytes tokenizer of the tiny policy makes GSM8K prompts ~4x longer than the recipe's 512-token limit
    summary = fit_and_resume(tmp_path, "recipes/qwen2.5-7b/grpo-nvfp4-gsm8k.yaml",
                             ["--data.init_args.limit=32", "--data.init_args.max_prompt_tokens=2000"])
    steps = summary["phases"][0]["steps"] + summary["phases"][1]["steps"]
    assert all(r["metrics"]["reward/total_mean"] == 0.0 and r["metrics"]["train/grad_norm"] == 0.0 for r in steps)
    assert all(r["metrics"]["data/refill_rounds"] == 0.0 for r in steps)  # GRPO never resamples


def test_dapo_32b_recipe_resamples_then_trains_on_what_it_has_and_resumes(tmp_path):
    """Every reward 0: each step draws the 3 extra batches DAPO allows, says so in one line, and trains on the
    last rollout - no loop, no crash. Prompts from a Big-Math-format file through JsonlPrompts, as on the GPU."""
    summary = fit_and_resume(tmp_path, "recipes/qwen2.5-32b/dapo-nvfp4-math.yaml",
                             ["--model.algorithm.init_args.overlong_buffer=1"], "--prompts", "24",
                             "--prompt-reader", "JsonlPrompts")
    fit, resume = summary["phases"]
    for record in fit["steps"] + resume["steps"]:
        metrics = record["metrics"]
        assert metrics["reward/total_mean"] == 0.0 and metrics["data/refill_rounds"] == 3.0
        assert metrics["data/groups_kept_frac"] == 0.0 and metrics["data/fallback_frac"] == 1.0  # 0 of 8 groups
    assert (fit["no_group_log_lines"], resume["no_group_log_lines"]) == (2, 1)  # one line a step
    assert "--data=JsonlPrompts" in fit["command"] and "--ckpt_path=last" in resume["command"]


def test_the_prompt_file_reads_the_same_through_the_recipes_hfprompts_and_jsonlprompts(tmp_path):
    """The GPU image has no `datasets`, so the device run reads the Big-Math-format file with JsonlPrompts; the
    32B recipe's own reader, HFPrompts, gives the same prompts, answers and Big-Math columns from it."""
    from qerl.data.hf_prompts import HFPrompts
    from qerl.data.jsonl_prompts import JsonlPrompts

    path = fit_recipe.write_prompts(str(tmp_path / "prompts.jsonl"), 12)
    kept = {"batch_size": 8, "system_prompt": "boxed", "max_prompt_tokens": 1024}  # the recipe's, kept by the swap
    recipe = HFPrompts(path=path, question_column="problem", answer_column="answer", **kept)
    device = JsonlPrompts(train_path=path, question_field="problem", answer_field="answer",
                          meta_fields=["source", "domain", "llama8b_solve_rate"], **kept)
    a, b = recipe.prepared("train"), device.prepared("train")
    assert len(a) == len(b) == 12
    assert [(p, ans) for p, ans, _ in a] == [(p, ans) for p, ans, _ in b]
    assert all(m["domain"] == n["domain"] and m["llama8b_solve_rate"] is n["llama8b_solve_rate"] is None
               for (_, _, m), (_, _, n) in zip(a, b, strict=True))


def test_bad_prompt_count_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(SystemExit, match="--prompts 501: give 1 to 500"):
        fit_recipe.main([os.path.join(REPO, "recipes/qwen2.5-32b/dapo-nvfp4-math.yaml"), "--shape", "tiny",
                         "--root", str(tmp_path), "--prompts", "501"])
