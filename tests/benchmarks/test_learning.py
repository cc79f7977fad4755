"""benchmarks/learning.py: the run commands parse as real recipes, and the summary rows come from the curves."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

import pytest
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import learning


def printed_config(name: str, tmp_path, seed: int | None = None, dtype: str | None = None,
                   task: str = "addition", **more) -> dict:
    from qerl.cli import main

    args = argparse.Namespace(**{"gguf": str(tmp_path / "m.gguf"), "max_steps": 7, "max_minutes": 3,
                                 "out": str(tmp_path), "seed": 5, "dtype": dtype, "task": task, **more})
    argv = learning.fit_cmd(name, args, seed)[3:]  # drop `python -m qerl.cli`
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([*argv, "--print_config"])
    assert code in (0, None)
    return yaml.safe_load(buf.getvalue())


@pytest.mark.parametrize("name", sorted(learning.VARIANTS))
def test_every_variant_is_a_valid_recipe_with_its_overrides(name, tmp_path):
    cfg = printed_config(name, tmp_path)
    assert cfg["trainer"]["max_steps"] == 7 and cfg["seed_everything"] == 5
    assert cfg["trainer"]["max_time"] == "00:00:03:00"
    assert cfg["trainer"]["logger"]["init_args"]["name"] == f"{name}-s5"
    assert cfg["model"]["policy"]["init_args"]["path"] == str(tmp_path / "m.gguf")
    assert (cfg["model"]["quantizer"] is None) == name.startswith("bf16")
    noise = cfg["model"]["noise"]
    if "aqn" in name:
        assert noise["class_path"].endswith("Exponential")
        start = {"nvfp4-aqn-rel4": 0.04}.get(name, 0.01)
        assert noise["init_args"]["sigma_start"] == pytest.approx(start)
        assert noise["init_args"]["relative"] is ("-rel" in name)
    else:
        assert noise is None


def test_seed_and_dtype_of_a_run_reach_its_config_and_name(tmp_path):
    cfg = printed_config("nvfp4-aqn", tmp_path, seed=2, dtype="bfloat16")
    assert cfg["seed_everything"] == 2 and cfg["model"]["dtype"] == "bfloat16"
    assert cfg["trainer"]["logger"]["init_args"]["name"] == "nvfp4-aqn-s2"
    assert printed_config("nvfp4", tmp_path)["model"]["dtype"] == "float32"  # the recipe's own without --dtype
    assert [learning.variant_of(r) for r in ("nvfp4-aqn-s2", "bf16-s10", "nvfp4-aqn", "other-s1")] == [
        "nvfp4-aqn", "bf16", "nvfp4-aqn", "other-s1"]


def test_spread_over_seeds_gives_mean_and_sample_std_per_variant():
    rows = [{"variant": "nvfp4-aqn", "train_acc_last20": v, "heldout_after": None} for v in (0.6, 0.7, 0.8)]
    rows.append({"variant": "bf16", "train_acc_last20": 0.5})
    out = learning.spread(rows)
    assert out["nvfp4-aqn"]["train_acc_last20"] == {"mean": 0.7, "std": 0.1, "min": 0.6, "max": 0.8, "n": 3}
    assert "heldout_after" not in out["nvfp4-aqn"] and out["bf16"]["train_acc_last20"]["std"] == 0.0


def test_summary_rows_are_computed_from_curves_and_evals():
    acc = [[s, 0.0 if s < 20 else 1.0] for s in range(40)]
    record = {
        "curves": {"nvfp4-aqn": {"train/accuracy": acc, "train/entropy": [[s, 2.0 - s / 20] for s in range(40)],
                                 "val/accuracy": [[19, 0.25], [39, 0.75]], "perf/step_s": [[0, 3.0], [1, 1.0],
                                                                                          [2, 2.0]]}},
        "evals": {"arith-nvfp4": {"accuracy": 0.01}, "arith-nvfp4-aqn-after": {"accuracy": 0.7},
                  "gsm8k-nvfp4": {"accuracy": 0.02}},
    }
    (row,) = learning.summarize(record)
    assert row["run"] == "nvfp4-aqn" and row["base"] == "nvfp4" and row["aqn"] is True
    assert row["variant"] == "nvfp4-aqn" and row["realized_sigma_last20"] is None
    assert row["steps"] == 40 and row["step_s_median"] == 2.0
    assert row["train_acc_first20"] == 0.0 and row["train_acc_last20"] == 1.0
    assert row["entropy_first20"] == pytest.approx(2.0 - 9.5 / 20, abs=1e-4)
    assert row["val_acc_step200"] is None and row["val_acc_final"] == 0.75
    assert (row["heldout_before"], row["heldout_after"]) == (0.01, 0.7)
    assert (row["gsm8k_before"], row["gsm8k_after"]) == (0.02, None)


def test_the_mixed3_task_reaches_the_data_and_the_held_out_eval(tmp_path):
    cfg = printed_config("nvfp4-aqn-rel1", tmp_path, task="mixed3")
    data = cfg["data"]["init_args"]
    assert (data["digits"], data["min_digits"], data["num_operands"], data["operations"]) == (2, 1, 3, "+-")
    assert cfg["model"]["sampling"]["max_new_tokens"] == 32 and cfg["model"]["validation"]["max_new_tokens"] == 32
    (reward,) = cfg["model"]["rewards"]
    assert reward["class_path"].endswith("GSM8KAccuracy") and reward["init_args"]["flexible"] is True
    addition = printed_config("nvfp4", tmp_path)  # the recipe's own task, tokens and strict reward
    assert addition["data"]["init_args"]["num_operands"] == 2 and addition["model"]["sampling"]["max_new_tokens"] == 16
    assert addition["model"]["rewards"][0]["init_args"]["flexible"] is False
    cmd = learning.eval_cmd("t", None, None, learning.arith(argparse.Namespace(task="mixed3")),
                            argparse.Namespace(gguf="m.gguf", out=str(tmp_path)))
    assert '{"digits": 2, "min_digits": 1, "num_operands": 3, "operations": "+-"}' in cmd and "--flexible" in cmd
    assert cmd[cmd.index("--max_new_tokens") + 1] == "32"


def test_the_addsub_task_keeps_16_tokens_and_flips_only_the_operations_and_the_reward(tmp_path):
    cfg = printed_config("nvfp4-aqn", tmp_path, task="addsub")
    data = cfg["data"]["init_args"]
    assert (data["digits"], data["min_digits"], data["num_operands"], data["operations"]) == (2, 1, 2, "+-")
    assert cfg["model"]["sampling"]["max_new_tokens"] == 16 and cfg["model"]["validation"]["max_new_tokens"] == 16
    (reward,) = cfg["model"]["rewards"]
    assert reward["class_path"].endswith("GSM8KAccuracy") and reward["init_args"]["flexible"] is True
    assert learning.task_overrides(argparse.Namespace(task="addsub")) == [
        "--data.init_args.operations", "+-", "--model.rewards", learning.FLEXIBLE]  # no token overrides
    cmd = learning.eval_cmd("t", "NVFP4", None, learning.arith(argparse.Namespace(task="addsub")),
                            argparse.Namespace(gguf="m.gguf", out=str(tmp_path)))
    assert '{"digits": 2, "operations": "+-"}' in cmd and "--flexible" in cmd
    assert cmd[cmd.index("--max_new_tokens") + 1] == "16"


def test_takeoff_is_the_first_step_whose_ten_step_mean_passes_the_level():
    points = [[s, 0.0] for s in range(30)] + [[s, 0.5] for s in range(30, 60)]
    assert learning.takeoff(points) == 32  # mean of steps 23-32: 3 x 0.5 / 10 = 0.15 > 0.1 (0.10 at 31 is not)
    assert learning.takeoff([[s, 0.05] for s in range(100)]) is None
    assert learning.variant_of("nvfp4-aqn-rel4-s3") == "nvfp4-aqn-rel4"


def test_validation_flags_and_a_fractional_time_cap_reach_the_fit_config(tmp_path):
    cfg = printed_config("nvfp4-aqn-rel1", tmp_path, task="mixed3", val_every=100, val_batch_size=64)
    assert cfg["trainer"]["val_check_interval"] == 100 and cfg["data"]["init_args"]["val_batch_size"] == 64
    assert cfg["data"]["init_args"]["val_size"] == 128 and cfg["data"]["init_args"]["batch_size"] == 8
    plain = printed_config("bf16", tmp_path)  # without the flags: the recipe's every 50 steps, 64 prompts a call
    assert plain["trainer"]["val_check_interval"] == 50 and plain["data"]["init_args"]["val_batch_size"] == 64
    assert printed_config("bf16", tmp_path, max_minutes=7.5)["trainer"]["max_time"] == "00:00:07:30"
    assert [learning.max_time(m) for m in (3, 7.25, 61)] == ["00:00:03:00", "00:00:07:15", "00:01:01:00"]


def test_runs_by_name_give_variant_and_seed_and_bad_names_are_named():
    assert learning.parse_runs(["nvfp4-aqn-rel1-s3", "bf16-s0"]) == [("nvfp4-aqn-rel1", 3), ("bf16", 0)]
    for bad in ("nvfp4-aqn", "mxfp4-s1", "bf16-sx"):
        with pytest.raises(ValueError, match=f"--runs '{bad}': expected <variant>-s<seed>"):
            learning.parse_runs([bad])


def test_after_evals_score_the_final_adapter_on_its_base_and_before_evals_can_be_skipped(tmp_path):
    args = argparse.Namespace(gguf="m.gguf", out=str(tmp_path), task="addition", gsm8k_after=["bf16"],
                              gsm8k_limit=-1, gsm8k_tokens=256, skip_before=False, all_bases=False,
                              variants=["bf16", "nvfp4-aqn"])
    final = tmp_path / "runs" / "nvfp4-aqn-s1" / "version_0" / "adapter" / "final"
    final.mkdir(parents=True)
    ((tag, cmd),) = learning.after_evals("fit-nvfp4-aqn-s1", args)
    assert tag == "arith-nvfp4-aqn-s1-after" and cmd[cmd.index("--adapter") + 1] == str(final)
    assert cmd[cmd.index("--quantizer") + 1] == "NVFP4" and cmd[cmd.index("--output_dir") + 1].endswith(tag)
    assert learning.after_evals("fit-bf16-s1", args) == []  # no adapter: the fit failed or was stopped early
    assert [t for t, _ in learning.before_evals(args)] == ["arith-bf16", "arith-nvfp4"]
    args.skip_before = True
    assert learning.before_evals(args) == []
