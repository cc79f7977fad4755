"""`qerl fit` of a real recipe on a random-weight policy of the recipe's shape, checkpointed and resumed.

Phase `fit` runs `qerl fit --config RECIPE` with the policy swapped for `RandomInit(SHAPE)` (tokenizer "auto": the
SmolLM2 GGUF tokenizer for Qwen shapes, nothing downloaded) for `--steps` optimizer steps, a checkpoint after
every step; phase `resume` runs the same command with `--ckpt_path=last` for `--resume-steps` more. Each phase is
its own process (a fresh vLLM engine, as a restarted job has). Everything else is the recipe's: its `max_steps`
(the probe stops the run after the asked steps, so the noise and learning-rate schedules stay the recipe's), rollout
engine, sampling, algorithm and data module; what the command line changes is printed and saved. The recipe's
`ModelCheckpoint` is replaced by one saving every step (`save_last`), its logger by TensorBoard under `--root`.
Random weights never emit EOS: every completion runs to `max_new_tokens`, and every reward is 0.

Each phase leaves in `--out`: `<tag>-<phase>.log` (the run's output), `<tag>-<phase>.jsonl` (`fit_probe.FitProbe`:
per-step metrics, written as they come, so a killed call still returns them) and `fit-<tag>.json` (the summary:
commands, setup and step times, `perf/*`, `rollout/*`, peak memory, the checkpoints, the resume evidence and the
checks). `--prompts N` writes N MATH500 problems (the shipped copy) in Big-Math's columns (`problem`, `answer`,
`source`, `domain`, `llama8b_solve_rate`) to `<root>/prompts.jsonl` and points the recipe's data at it: through
`HFPrompts` (the recipe's reader, `--data.init_args.path`; needs `datasets`) or, `--prompt-reader JsonlPrompts`,
through `JsonlPrompts` with the same columns (the GPU image has no `datasets`); the recipe's batch size, system
prompt and prompt limit are kept either way. Arguments after `--` go to `qerl fit` as they are.

    python benchmarks/fit_recipe.py recipes/qwen2.5-7b/grpo-nvfp4-gsm8k.yaml --shape qwen2.5-7b --steps 2 \\
        --resume-steps 1 --root /tmp/fit7b --out $OUT
    python benchmarks/fit_recipe.py recipes/qwen2.5-32b/dapo-nvfp4-math.yaml --shape qwen2.5-32b --phase fit \\
        --steps 2 --prompts 128 --prompt-reader JsonlPrompts --root /tmp/fit32b --out $OUT -- \\
        --model.sampling.max_new_tokens=128 --model.rollout.init_args.vllm.max_model_len=1152 \\
        --model.algorithm.init_args.overlong_buffer=25
(then the same with `--phase resume --resume-steps 1`; the device commands and their times: results/vllm-notes.md)
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MATH500 = os.path.join(REPO, "qerl", "data", "files", "math500", "test.jsonl")
#: qerl.training.collect.no_signal_line: the one line of a step whose dynamic sampling kept no group
NO_GROUP_LINE = re.compile(r"step \d+: \w+: no group had a reward spread after \d+ resample round")
COLUMNS = ("wall_s", "perf/step_s", "perf/rollout_s", "perf/score_s", "perf/train_s", "rollout/tokens_per_s",
           "rollout/length_mean", "data/refill_rounds", "data/groups_kept_frac", "data/fallback_frac", "perf/peak_mem",
           "device_used_gib")


def write_prompts(path: str, rows: int) -> str:
    """`rows` MATH500 problems in Big-Math-RL-Verified's columns (what the 32B recipe's HFPrompts reads)."""
    with open(MATH500) as f:
        source = [json.loads(line) for line in f if line.strip()]
    if not 0 < rows <= len(source):
        raise SystemExit(f"--prompts {rows}: give 1 to {len(source)} (MATH500 has {len(source)} problems).")
    with open(path, "w") as f:
        f.writelines(json.dumps({"problem": row["problem"], "answer": row["answer"], "source": "math500",
                                 "domain": [row.get("subject", "")], "llama8b_solve_rate": None}) + "\n"
                     for row in source[:rows])
    return path


def prompt_args(path: str, reader: str) -> list[str]:
    """Point the recipe's data at the prompt file: its own HFPrompts, or JsonlPrompts with the same columns."""
    if reader == "HFPrompts":
        return ["--data=HFPrompts", f"--data.init_args.path={path}", "--data.init_args.question_column=problem",
                "--data.init_args.answer_column=answer"]
    return ["--data=JsonlPrompts", f"--data.init_args.train_path={path}", "--data.init_args.question_field=problem",
            "--data.init_args.answer_field=answer",
            "--data.init_args.meta_fields=[source,domain,llama8b_solve_rate]"]


def fit_args(args, phase: str, probe_out: str, steps: int) -> list[str]:
    """The `qerl fit` arguments of one phase."""
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
              "init_args": {"save_dir": os.path.join(args.root, "runs"), "name": args.tag}}
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"every_n_train_steps": 1, "save_last": True}},
                 {"class_path": "fit_probe.FitProbe", "init_args": {"out": probe_out, "steps": steps}}]
    out = ["fit", "--config", args.recipe, "--model.policy=RandomInit", f"--model.policy.init_args.config={args.shape}",
           f"--trainer.logger={json.dumps(logger)}", f"--trainer.callbacks={json.dumps(callbacks)}"]
    if args.prompts:
        out += prompt_args(os.path.join(args.root, "prompts.jsonl"), args.prompt_reader)
    out += args.qerl_args
    return out + (["--ckpt_path=last"] if phase == "resume" else [])


def run_child(argv: list[str], log_path: str) -> tuple[int, float]:
    """Run `python -m qerl.cli *argv` with its output on the screen and in `log_path`; (exit status, seconds)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, REPO, os.environ.get("PYTHONPATH")) if p)
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "qerl.cli", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, text=True, errors="replace")
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    return code, time.time() - start


def read_records(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def checkpoints(folder: str | None) -> list[dict]:
    """Every `*.ckpt` in the run's checkpoint folder: name, size and the global step it holds."""
    if not folder or not os.path.isdir(folder):
        return []
    import torch

    found = []
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".ckpt")):
        path = os.path.join(folder, name)
        step = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("global_step")
        found.append({"file": name, "bytes": os.path.getsize(path), "global_step": step})
    return found


def finite(records: list[dict]) -> bool:
    """Every number logged at every step is finite."""
    values = [v for r in records for v in r["metrics"].values() if v is not None]
    return bool(values) and all(math.isfinite(v) for v in values)


def run_phase(args, phase: str, steps: int) -> dict:
    """One phase in its own process; its summary and checks."""
    stem = os.path.join(args.out, f"{args.tag}-{phase}")
    if os.path.exists(stem + ".jsonl"):
        os.remove(stem + ".jsonl")
    argv = fit_args(args, phase, stem + ".jsonl", steps)
    print(f"fit_recipe: {phase} phase, {steps} step(s): qerl {' '.join(argv)}", flush=True)
    launched = time.time()
    code, wall = run_child(argv, stem + ".log")
    records = read_records(stem + ".jsonl")
    start = next((r for r in records if r["event"] == "start"), None)
    done = [r for r in records if r["event"] == "step"]
    with open(stem + ".log", errors="replace") as f:
        no_group_lines = sum(bool(NO_GROUP_LINE.search(line)) for line in f)
    first = start["global_step"] if start else None
    ckpts = checkpoints(os.path.join(start["log_dir"], "checkpoints") if start and start.get("log_dir") else None)
    last = next((c["global_step"] for c in ckpts if c["file"] == "last.ckpt"), None)
    checks = {"exit_0": code == 0, f"{steps}_steps": len(done) == steps,
              "steps_continue": first is not None and [r["global_step"] for r in done] == list(
                  range(first + 1, first + 1 + len(done))),
              "last_ckpt_at_final_step": bool(done) and last == done[-1]["global_step"],
              "metrics_finite": finite(done)}
    if phase == "resume":
        s = start or {}
        checks["resumed_at_ckpt_step"] = bool(s) and s.get("ckpt_global_step") == first and first > 0
        checks["adapter_equals_ckpt"] = bool(s.get("adapter_equal"))
        checks["optimizer_and_schedule_restored"] = bool(s) and s.get("optimizer_step") == s.get(
            "ckpt_optimizer_step") == first and s.get("scheduler_step") == s.get("ckpt_scheduler_step") == first
    return {"phase": phase, "command": "qerl " + " ".join(argv), "exit": code, "wall_s": round(wall, 1),
            "setup_s": round(start["time"] - launched, 1) if start else None,
            "start": {k: v for k, v in (start or {}).items() if k not in ("event", "time")},
            "steps": [{k: v for k, v in r.items() if k not in ("event", "time")} for r in done],
            "checkpoints": ckpts, "no_group_log_lines": no_group_lines,
            "adapter_moved": bool(start) and any(r["adapter_norm"] != start["adapter_norm"] for r in done),
            "checks": checks}


def table(phases: list[dict]) -> str:
    head = ["phase", "step", *COLUMNS]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for phase in phases:
        for r in phase["steps"]:
            values = {**r["metrics"], "wall_s": r["wall_s"], "device_used_gib": r.get("device_used_gib")}
            cells = [f"{values[c]:.3g}" if isinstance(values.get(c), (int, float)) else "-" for c in COLUMNS]
            lines.append(" | ".join([phase["phase"], str(r["global_step"]), *cells]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    qerl_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--shape", required=True, help="RandomInit preset (qwen2.5-7b, qwen2.5-32b, tiny, ...)")
    parser.add_argument("--phase", choices=("both", "fit", "resume"), default="both")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps of the fit phase")
    parser.add_argument("--resume-steps", type=int, default=1, help="optimizer steps after the resume")
    parser.add_argument("--root", default=None, help="run folder (default /tmp/qerl-fit/<tag>); a resume reads it")
    parser.add_argument("--out", default=None, help="logs and summary (default $OUT, else --root)")
    parser.add_argument("--tag", default=None, help="file-name stem (default: the recipe's folder and name)")
    parser.add_argument("--prompts", type=int, default=0, help="write N MATH500 rows in Big-Math's columns")
    parser.add_argument("--prompt-reader", choices=("HFPrompts", "JsonlPrompts"), default="HFPrompts")
    args = parser.parse_args(argv)
    args.qerl_args = qerl_args
    if not os.path.isfile(args.recipe):
        raise SystemExit(f"fit_recipe: recipe {args.recipe} not found.")
    recipe = os.path.abspath(args.recipe).split(os.sep)
    args.tag = args.tag or "-".join(recipe[-2:]).removesuffix(".yaml")
    args.root = os.path.abspath(args.root or os.path.join("/tmp", "qerl-fit", args.tag))
    args.out = os.path.abspath(args.out or os.environ.get("OUT") or args.root)
    os.makedirs(args.root, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    if args.prompts:
        write_prompts(os.path.join(args.root, "prompts.jsonl"), args.prompts)
    plan = {"both": [("fit", args.steps), ("resume", args.resume_steps)], "fit": [("fit", args.steps)],
            "resume": [("resume", args.resume_steps)]}[args.phase]
    summary = {"recipe": args.recipe, "shape": args.shape, "date": datetime.date.today().isoformat(),
               "root": args.root, "qerl_args": qerl_args, "phases": []}
    for phase, steps in plan:
        result = run_phase(args, phase, steps)
        summary["phases"].append(result)
        summary["card"] = result["start"].get("card", summary.get("card"))
        with open(os.path.join(args.out, f"fit-{args.tag}.json"), "w") as f:
            json.dump(summary, f, indent=1)
        if result["exit"] != 0:
            break
    phases = {p["phase"]: p for p in summary["phases"]}
    if "fit" in phases and "resume" in phases and phases["fit"]["steps"]:  # one call ran both: the adapter carried over
        phases["resume"]["checks"]["adapter_is_where_fit_stopped"] = (
            phases["resume"]["start"].get("adapter_norm") == phases["fit"]["steps"][-1]["adapter_norm"])
    summary["ok"] = all(all(p["checks"].values()) for p in summary["phases"]) and len(summary["phases"]) == len(plan)
    with open(os.path.join(args.out, f"fit-{args.tag}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"\n{args.recipe} on RandomInit({args.shape}), {summary.get('card')}, {summary['date']}")
    print(table(summary["phases"]))
    for p in summary["phases"]:
        failed = [k for k, ok in p["checks"].items() if not ok]
        print(f"{p['phase']}: exit {p['exit']}, {p['wall_s']} s (setup {p['setup_s']} s), "
              f"'no group had a reward spread' lines {p['no_group_log_lines']}, checks {'ok' if not failed else 'FAILED: ' + ', '.join(failed)}")
        if p["phase"] == "resume" and p["start"]:
            s = p["start"]
            print(f"  resumed at step {s.get('global_step')} from {s.get('ckpt_path')} (checkpoint step "
                  f"{s.get('ckpt_global_step')}, optimizer step {s.get('optimizer_step')}, scheduler step "
                  f"{s.get('scheduler_step')}); adapter max |diff| {s.get('adapter_max_abs_diff')} over "
                  f"{s.get('adapter_params')} parameters")
        if not p["adapter_moved"]:
            print(f"  {p['phase']}: the adapter did not move (every advantage 0: equal rewards, no length shaping), "
                  "so its equality with the checkpoint says little; the optimizer and schedule positions do")
    return summary


if __name__ == "__main__":
    sys.exit(0 if main().get("ok") else 1)
