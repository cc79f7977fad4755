"""Writing an evaluation: `summary.json`, `completions.jsonl` (every completion with its score) and a printed table."""
from __future__ import annotations

import dataclasses
import json
import os

from qerl.evaluation.evaluate import Completion

SUMMARY_FILE = "summary.json"
COMPLETIONS_FILE = "completions.jsonl"

_ROWS = (("accuracy (pass@1 avg)", "accuracy", "{:.2%}"), ("mean length (tokens)", "mean_length", "{:.1f}"),
         ("truncated", "truncated_frac", "{:.1%}"), ("mean reward", "mean_reward", "{:.3f}"),
         ("tokens/s", "tokens_per_s", "{:.1f}"), ("generation s", "generation_s", "{:.1f}"),
         ("generation CPU s", "generation_cpu_s", "{:.1f}"))


def write_report(output_dir: str, summary: dict, records: list[Completion], run: dict) -> tuple[str, str]:
    """Write `{"run": ..., "metrics": ...}` to summary.json and one JSON object per completion; return both paths."""
    os.makedirs(output_dir, exist_ok=True)
    completions = os.path.join(output_dir, COMPLETIONS_FILE)
    with open(completions, "w") as handle:
        handle.writelines(json.dumps(dataclasses.asdict(record), ensure_ascii=False) + "\n" for record in records)
    path = os.path.join(output_dir, SUMMARY_FILE)
    with open(path, "w") as handle:
        json.dump({"run": run, "metrics": summary}, handle, indent=2, sort_keys=False)
        handle.write("\n")
    return path, completions


def read_completions(path: str) -> list[Completion]:
    """The records of a completions.jsonl written by `write_report`."""
    with open(path) as handle:
        return [Completion(**json.loads(line)) for line in handle if line.strip()]


def format_table(summary: dict, run: dict) -> str:
    """A plain-text table of the run (model, adapter, dataset) and its metrics."""
    lines = [f"model    {run.get('model')}  quantizer {run.get('quantizer') or 'none (dense)'}  dtype {run.get('dtype')}"]
    adapter = run.get("adapter")
    lines.append(f"adapter  {adapter['path']}  sha256 {adapter['sha256']}" if adapter else "adapter  none (base model)")
    lines.append(f"dataset  {run.get('dataset')} {run.get('split')}: {int(summary['num_prompts'])} prompts x "
                 f"{int(summary['n_samples'])} samples, temperature {run.get('temperature')}, top_p {run.get('top_p')}, "
                 f"max_new_tokens {run.get('max_new_tokens')}, rollout {run.get('rollout')}, seed {run.get('seed')}")
    rows = [(label, fmt.format(summary[key])) for label, key, fmt in _ROWS[:1] if key in summary]
    rows += [(key, f"{value:.2%}") for key, value in summary.items() if key.startswith("pass@")]
    rows += [(label, fmt.format(summary[key])) for label, key, fmt in _ROWS[1:] if key in summary]
    width = max(len(label) for label, _ in rows)
    lines.append("-" * (width + 14))
    lines.extend(f"{label:<{width}}  {value:>10}" for label, value in rows)
    return "\n".join(lines)
