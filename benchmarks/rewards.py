"""Reward checker throughput (answers/second) on GSM8K- and MATH500-style outputs.

Outputs are built from the shipped datasets' own reference solutions: "right"
completions are the solutions themselves (GSM8K `... #### N`, MATH500 `... \\boxed{..}`),
"wrong" ones pair each solution with another problem's gold answer. The baseline,
run in the same process, is plain string equality of the extracted answer (no
normalisation, no sympy). Also printed: how often the checker accepts the right
completions (recall on reference solutions) and rejects the wrong ones.

    .venv/bin/python benchmarks/rewards.py [--out benchmarks/results/rewards-cpu-DATE.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

from qerl.data import GSM8K, MATH500
from qerl.data.jsonl import read_jsonl
from qerl.data.shipped import shipped
from qerl.rewards import GSM8KAccuracy, MathAccuracy
from qerl.rewards.final_answer import boxed_contents


def gsm8k_outputs() -> tuple[list[str], list[str], list[str]]:
    rows = read_jsonl(shipped("gsm8k/test.jsonl"))
    completions = [r["answer"] for r in rows]
    golds = [r.answer for r in GSM8K().rows("test")]
    return completions, golds, golds[1:] + golds[:1]


def math500_outputs() -> tuple[list[str], list[str], list[str]]:
    rows = read_jsonl(shipped("math500/test.jsonl"))
    completions = [r["solution"] for r in rows]
    golds = [r.answer for r in MATH500().rows("test")]
    return completions, golds, golds[1:] + golds[:1]


def baseline_gsm8k(completions, golds):
    return [float(c.rsplit("####", 1)[-1].strip() == g.strip()) for c, g in zip(completions, golds)]


def baseline_math(completions, golds):
    boxes = [boxed_contents(c) for c in completions]
    return [float(bool(b) and b[-1][2].strip() == g.strip()) for b, g in zip(boxes, golds)]


def timed(fn, completions, golds, repeats: int) -> tuple[float, list[float]]:
    best, scores = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        scores = fn(completions, golds)
        best = min(best, time.perf_counter() - start)
    return len(completions) / best, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    math_reward = MathAccuracy(timeout_s=1.0)
    math_reward(["\\boxed{x+1}"], ["1+x"])  # start the math-verify worker outside the timing
    suites = {
        "GSM8K": (gsm8k_outputs(), GSM8KAccuracy(), baseline_gsm8k),
        "MATH500": (math500_outputs(), math_reward, baseline_math),
    }
    rows = []
    for suite, ((completions, golds, wrong), reward, baseline) in suites.items():
        for label, fn in (("baseline: exact string", baseline), (reward.name, reward)):
            rate_right, right = timed(fn, completions, golds, args.repeats)
            rate_wrong, rejected = timed(fn, completions, wrong, args.repeats)
            rows.append({
                "suite": suite, "checker": label, "answers": len(completions),
                "answers_per_s_right": round(rate_right, 1), "answers_per_s_wrong": round(rate_wrong, 1),
                "accepts_reference": round(sum(right) / len(right), 4),
                "rejects_other_gold": round(1 - sum(rejected) / len(rejected), 4),
            })
    verdicts = dict(math_reward.verdicts)
    math_reward.checker.close()

    header = f"{'suite':8} {'checker':24} {'answers':>7} {'ans/s right':>12} {'ans/s wrong':>12} " \
             f"{'accepts ref':>11} {'rejects other':>13}"
    print(f"Reward checker throughput - CPU ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores), {datetime.date.today()}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['suite']:8} {r['checker']:24} {r['answers']:>7} {r['answers_per_s_right']:>12,.0f} "
              f"{r['answers_per_s_wrong']:>12,.0f} {r['accepts_reference']:>11.1%} {r['rejects_other_gold']:>13.1%}")
    print(f"MathAccuracy verdicts over all runs: {verdicts}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"date": str(datetime.date.today()), "device": f"CPU, {os.cpu_count()} cores (shared)",
                       "rows": rows, "math_verdicts": verdicts}, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
