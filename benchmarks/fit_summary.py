"""Summarize one `qerl fit` run from its TensorBoard events: steps, early vs late means of the key scalars.

    python benchmarks/fit_summary.py runs/smollm2-grpo-vllm/version_0 --window 10 --out summary.json
Early = mean of the first `window` logged values, late = mean of the last `window`, curve = means of
consecutive blocks of `window` values; used to check that reward
rises in end-to-end runs (e.g. the SmolLM2 vLLM recipe on the GPU).
"""
from __future__ import annotations

import argparse
import json
import sys

TAGS = ("reward/total_mean", "train/accuracy", "train/entropy", "rollout/mismatch_kl", "rollout/tokens_per_s",
        "noise/sigma", "noise/realized_sigma", "perf/step_s", "val/accuracy")


def summarize(folder: str, window: int) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(folder, size_guidance={"scalars": 0})
    acc.Reload()
    have = set(acc.Tags().get("scalars", []))
    if not have:
        raise SystemExit(f"{folder}: no TensorBoard scalars found (is it a version_N folder of a run?)")
    out: dict = {"folder": folder}
    for tag in [t for t in TAGS if t in have]:
        values = [e.value for e in acc.Scalars(tag)]
        out[tag] = {"steps": len(values), "early": round(sum(values[:window]) / len(values[:window]), 5),
                    "late": round(sum(values[-window:]) / len(values[-window:]), 5),
                    "first_step": acc.Scalars(tag)[0].step, "last_step": acc.Scalars(tag)[-1].step,
                    "curve": [round(sum(b) / len(b), 5) for b in (values[i:i + window]
                                                                  for i in range(0, len(values), window))]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    summary = summarize(args.folder, args.window)
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    sys.exit(0)


if __name__ == "__main__":
    main()
