"""`qerl eval` and validation inside `qerl fit`: pass@k numbers, the adapter really applied, reproducibility,
summary == JSONL, and bad input refused with messages. Tiny random Qwen2 (byte tokenizer) except one slow test."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re

import pytest

from qerl.commands.evaluate import main
from qerl.evaluation.evaluate import Completion, k_values, pass_at_k, summarize
from qerl.evaluation.report import read_completions
from tests.eval.adapters import edit_config, save_adapter

TINY = ["--model", "tiny", "--dataset", "arithmetic", "--limit", "2", "--n_samples", "2", "--max_new_tokens", "5",
        "--dtype", "float32", "--system_prompt", "none"]


def run_eval(tmp_path, name: str, *extra: str) -> tuple[dict, list[Completion]]:
    out = tmp_path / name
    assert main([*TINY, *extra, "--output_dir", str(out)]) == 0
    with open(out / "summary.json") as handle:
        summary = json.load(handle)
    return summary, read_completions(str(out / "completions.jsonl"))


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    return save_adapter(str(tmp_path_factory.mktemp("adapter") / "trained"))


# ------------------------------------------------------------------ pass@k


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (4, 0, 1, 0.0), (4, 4, 4, 1.0), (4, 1, 1, 0.25), (4, 1, 2, 0.5), (4, 2, 2, 1 - 1 / 6), (5, 2, 3, 0.9),
    (10, 3, 4, 1 - math.comb(7, 4) / math.comb(10, 4)),
])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_k_values_and_summary_numbers():
    assert k_values(1) == [1] and k_values(4) == [1, 2, 4] and k_values(6) == [1, 2, 4, 6]
    records = [Completion(p, s, "q", "a", "x", correct, float(correct), {}, length, length == 8)
               for p, s, correct, length in [(0, 0, True, 4), (0, 1, False, 8), (1, 0, False, 8), (1, 1, False, 2)]]
    summary = summarize(records)
    assert summary["accuracy"] == 0.25 and summary["pass@1"] == 0.25
    assert summary["pass@2"] == 0.5  # prompt 0 solved by one of its two samples, prompt 1 never
    assert summary["mean_length"] == 5.5 and summary["truncated_frac"] == 0.5
    with pytest.raises(ValueError, match="different sample counts"):
        summarize(records[:3])


# ------------------------------------------------------------------ qerl eval on the tiny model


def test_the_adapter_is_applied_named_with_its_checksum_and_changes_the_completions(tmp_path, adapter_dir, capsys):
    base, base_rows = run_eval(tmp_path, "base", "--seed", "3")
    tuned, tuned_rows = run_eval(tmp_path, "tuned", "--seed", "3", "--adapter", adapter_dir)
    assert base["run"]["adapter"] is None
    with open(os.path.join(adapter_dir, "adapter_model.safetensors"), "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    info = tuned["run"]["adapter"]
    assert info["sha256"] == digest and info["rank"] == 4
    assert info["num_lora_modules"] == 2 * 7  # 2 layers x q,k,v,o,gate,up,down
    assert info["logit_change"] > 0
    assert digest in capsys.readouterr().out  # the printed table names the adapter
    assert [r.completion for r in base_rows] != [r.completion for r in tuned_rows]


def test_the_same_seed_gives_the_same_completions_and_another_seed_does_not(tmp_path):
    first, rows1 = run_eval(tmp_path, "a", "--seed", "7")
    again, rows2 = run_eval(tmp_path, "b", "--seed", "7")
    _, rows3 = run_eval(tmp_path, "c", "--seed", "8")
    assert [r.completion for r in rows1] == [r.completion for r in rows2]
    assert first["metrics"]["accuracy"] == again["metrics"]["accuracy"]
    assert [r.completion for r in rows1] != [r.completion for r in rows3]


def test_rollout_args_reach_the_backend_and_bad_ones_are_named(tmp_path, capsys):
    summary, rows = run_eval(tmp_path, "a", "--temperature", "0", "--rollout_args", '{"max_batch_rows": 1}')
    assert summary["run"]["rollout_args"] == {"max_batch_rows": 1} and len(rows) == 4
    _, same = run_eval(tmp_path, "b", "--temperature", "0")  # greedy: one row at a time = the default batching
    assert [r.completion for r in rows] == [r.completion for r in same]
    assert main([*TINY, "--rollout_args", "{max_batch_rows: 1}"]) == 2
    assert "--rollout_args is not valid JSON" in capsys.readouterr().err
    assert main([*TINY, "--rollout_args", '{"max_rows": 1}']) == 2
    err = capsys.readouterr().err
    assert "HF has no setting 'max_rows'" in err and "max_batch_rows" in err


def test_the_summary_matches_the_jsonl_and_a_quantized_base_takes_the_adapter(tmp_path, adapter_dir):
    summary, rows = run_eval(tmp_path, "nvfp4", "--quantizer", "NVFP4", "--adapter", adapter_dir, "--n_samples", "3")
    metrics = summary["metrics"]
    assert len(rows) == 2 * 3 and {r.prompt_index for r in rows} == {0, 1}
    recomputed = summarize(rows)
    for key in ("accuracy", "pass@1", "pass@2", "pass@3", "mean_length", "truncated_frac", "mean_reward"):
        assert metrics[key] == pytest.approx(recomputed[key]), key
    assert metrics["generated_tokens"] == sum(r.length for r in rows)
    assert all(r.scores["GSM8KAccuracy"] == float(r.correct) for r in rows)
    assert summary["run"]["quantizer"] == "NVFP4" and summary["run"]["adapter"]["num_lora_modules"] == 14


def test_dequantizing_once_gives_the_same_completions_as_decoding_at_every_forward(tmp_path, adapter_dir):
    once, once_rows = run_eval(tmp_path, "once", "--quantizer", "NF4", "--adapter", adapter_dir, "--seed", "5")
    every, every_rows = run_eval(tmp_path, "every", "--quantizer", "NF4", "--adapter", adapter_dir, "--seed", "5",
                                 "--no-dequantize_once")
    assert once["run"]["dequantize_once"] is True and every["run"]["dequantize_once"] is False  # on by default on CPU
    assert [r.completion for r in once_rows] == [r.completion for r in every_rows]
    dense, _ = run_eval(tmp_path, "dense", "--dequantize_once")
    assert dense["run"]["dequantize_once"] is False  # nothing to decode without a quantizer


# ------------------------------------------------------------------ bad input


def test_an_adapter_for_another_base_is_refused_naming_both(tmp_path, capsys):
    from qerl.models import RandomInit

    other = RandomInit({"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                        "num_key_value_heads": 1})
    path = save_adapter(str(tmp_path / "other"), loader=other)
    edit_config(path, base_model_name_or_path="my-org/other-base")
    assert main([*TINY, "--adapter", path, "--output_dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "my-org/other-base" in err and "RandomInit(config='tiny'" in err
    assert re.search(r"layer 'model\.layers\.0\.mlp\.down_proj' is 128 -> 64 in the model but the adapter's lora_A/lora_B are 64 -> 32", err)
    assert not (tmp_path / "x").exists()


def test_an_adapter_whose_rank_disagrees_with_its_config_is_refused(tmp_path, capsys):
    path = save_adapter(str(tmp_path / "r"), rank=4)
    edit_config(path, r=8)
    assert main([*TINY, "--adapter", path, "--output_dir", str(tmp_path / "x")]) == 2
    assert "rank r=8" in capsys.readouterr().err


def test_an_untrained_adapter_and_a_missing_folder_are_refused(tmp_path, capsys):
    zero = save_adapter(str(tmp_path / "zero"), b_scale=0.0)
    assert main([*TINY, "--adapter", zero, "--output_dir", str(tmp_path / "x")]) == 2
    assert "every LoRA B weight is zero" in capsys.readouterr().err
    missing = str(tmp_path / "nowhere")
    assert main([*TINY, "--adapter", missing, "--output_dir", str(tmp_path / "x")]) == 2
    assert missing in capsys.readouterr().err


def test_unknown_dataset_lists_the_known_ones_and_missing_files_name_the_path(tmp_path, capsys):
    assert main(["--model", "tiny", "--dataset", "gsm9k", "--output_dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "qerl eval: unknown dataset 'gsm9k'. Known datasets: AIME24, AMC23, Arithmetic, GSM8K, HFPrompts, jsonl" in err
    assert err.rstrip().endswith("Did you mean GSM8K?")
    assert main(["--model", "tiny", "--quantizer", "nvfp5"]) == 2
    assert "qerl eval: unknown quantizer 'nvfp5'. Known quantizers: " in capsys.readouterr().err
    assert main(["--model", "tiny", "--dataset", "jsonl", "--data_path", str(tmp_path / "q.jsonl")]) == 2
    assert str(tmp_path / "q.jsonl") in capsys.readouterr().err
    assert main([*TINY, "--n_samples", "0"]) == 2
    assert "--n_samples" in capsys.readouterr().err


# ------------------------------------------------------------------ validation inside fit


def test_validation_runs_inside_fit_and_logs_val_metrics_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from qerl.evaluation.validation import ValidationSettings
    from tests.rl_helpers import tiny_data, tiny_module, tiny_trainer

    module = tiny_module(validation=ValidationSettings(n_samples=2, max_new_tokens=4), log_samples_every=0,
                         quantizer=None, noise=None)
    trainer = tiny_trainer(tmp_path, max_steps=2, val_check_interval=1, check_val_every_n_epoch=None)
    trainer.fit(module, datamodule=tiny_data(val_size=3, batch_size=2))
    assert module.last_validation["val/num_prompts"] == 3
    assert set(module.last_validation) >= {"val/accuracy", "val/pass@1", "val/pass@2", "val/mean_length",
                                           "val/truncated_frac", "val/tokens_per_s"}
    events = EventAccumulator(trainer.log_dir)
    events.Reload()
    accuracy = events.Scalars("val/accuracy")
    assert len(accuracy) == 2 and accuracy[0].step < accuracy[1].step  # once after each of the two steps
    assert 0.0 <= accuracy[-1].value <= 1.0


# ------------------------------------------------------------------ the real model


@pytest.mark.slow
def test_real_smollm2_on_gsm8k(tmp_path, smollm2_path):
    out = tmp_path / "smol"
    assert main(["--dataset", "gsm8k", "--limit", "2", "--n_samples", "1", "--max_new_tokens", "24",
                 "--quantizer", "NF4", "--dtype", "float32", "--output_dir", str(out)]) == 0
    with open(out / "summary.json") as handle:
        summary = json.load(handle)
    assert summary["run"]["model"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert summary["metrics"]["num_completions"] == 2 and summary["metrics"]["generated_tokens"] > 0
    rows = read_completions(str(out / "completions.jsonl"))
    assert [r.answer for r in rows] == ["18", "3"] and all(r.completion.strip() for r in rows)


def test_progress_is_reported_after_every_batch(tmp_path, capsys):
    _, rows = run_eval(tmp_path, "progress", "--batch_size", "1")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("qerl eval: ") and "problems" in line]
    assert [line.split()[2] for line in lines] == ["1/2", "2/2"]
    right = sum(r.correct for r in rows)
    assert f"{right}/{len(rows)} completions correct so far" in lines[-1]


def test_jsonl_fields_are_chosen_on_the_command_line(tmp_path, capsys):
    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"problem": "What is 2+3?", "sol": "5"}) + "\n"
                    + json.dumps({"problem": "What is 4+4?", "sol": "8"}) + "\n")
    base = ["--model", "tiny", "--dataset", "jsonl", "--data_path", str(data), "--n_samples", "1",
            "--max_new_tokens", "3", "--dtype", "float32", "--system_prompt", "none"]
    out = tmp_path / "fields"
    assert main([*base, "--question_field", "problem", "--answer_field", "sol", "--output_dir", str(out)]) == 0
    rows = read_completions(str(out / "completions.jsonl"))
    assert sorted(r.answer for r in rows) == ["5", "8"]
    assert main([*base, "--output_dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing field 'question'" in err and "--question_field/--answer_field" in err
    assert main([*TINY, "--question_field", "problem", "--output_dir", str(tmp_path / "x")]) == 2
    assert "--question_field is for --dataset jsonl" in capsys.readouterr().err


def test_flexible_is_recorded_and_only_for_gsm8k(tmp_path, capsys):
    summary, _ = run_eval(tmp_path, "flex", "--flexible")
    assert summary["run"]["reward"] == "GSM8KAccuracy (flexible)"
    assert main([*TINY, "--flexible", "--reward", "MathAccuracy", "--output_dir", str(tmp_path / "x")]) == 2
    assert "--flexible is a GSM8KAccuracy setting" in capsys.readouterr().err


def test_dataset_args_set_the_arithmetic_digits_of_the_quickstart_task(capsys):
    from qerl.commands.evaluate import build_parser, dataset_module

    module = dataset_module(build_parser().parse_args(["--dataset", "arithmetic", "--dataset_args", '{"digits": 1}']))
    assert module.digits == 1
    assert all(int(a) <= 18 for a in (r.answer for r in module.rows("test")))  # sums of two 1-digit numbers
    assert main(["--dataset", "arithmetic", "--dataset_args", '{"digit": 1}']) == 2
    assert "digit" in capsys.readouterr().err
    assert main(["--dataset", "arithmetic", "--dataset_args", "digits=1"]) == 2
    assert "--dataset_args is not valid JSON" in capsys.readouterr().err
