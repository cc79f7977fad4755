"""`qerl demo`: RL of SmolLM2-135M on a frozen NVFP4 base with LoRA + AQN + GRPO, on a CPU, in minutes.

Runs `recipes/quickstart.yaml` through `qerl fit`, then prints the reward and accuracy of the first and
the last steps and where the TensorBoard logs are.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"
TAGS = {"reward": "reward/total_mean", "accuracy": "train/accuracy"}


def read_scalars(log_dir: str, tags: list[str]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of each tag from the TensorBoard event files under `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    have = set(acc.Tags().get("scalars", []))
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags if tag in have}


def start_end(values: list[tuple[int, float]], window: int) -> tuple[float, float]:
    """Mean of the first and of the last `window` logged values."""
    numbers = [v for _, v in sorted(values)]
    k = max(1, min(window, len(numbers) // 2 or 1))
    return sum(numbers[:k]) / k, sum(numbers[-k:]) / k


def summary(log_dir: str, window: int = 5) -> str:
    """Lines comparing the start and the end of the run."""
    scalars = read_scalars(log_dir, list(TAGS.values()))
    lines = []
    for label, tag in TAGS.items():
        if not scalars.get(tag):
            lines.append(f"  {label:<9} (not logged)")
            continue
        first, last = start_end(scalars[tag], window)
        steps = len(scalars[tag])
        k = max(1, min(window, steps // 2 or 1))
        lines.append(f"  {label:<9} start {first:6.3f}  ->  end {last:6.3f}   (mean of the first / last {k} of "
                     f"{steps} steps)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="qerl demo",
        description="Train SmolLM2-135M-Instruct (NVFP4 + LoRA + AQN + GRPO) on 2-digit addition on this CPU, then "
                    "print the reward and accuracy at the start and the end. Extra arguments go to `qerl fit` "
                    "(e.g. --trainer.max_steps=5).")
    parser.add_argument("--config", default=str(QUICKSTART), help="recipe to run (default: recipes/quickstart.yaml)")
    parser.add_argument("--window", type=int, default=5, help="steps averaged for the start and end numbers")
    args, extra = parser.parse_known_args(argv)
    if not os.path.isfile(args.config):
        print(f"qerl demo: recipe {args.config} not found; run from a qerl checkout or pass --config.",
              file=sys.stderr)
        return 2
    from qerl.lightning_cli import QeRLCLI

    try:
        cli = QeRLCLI(args=["fit", "--config", args.config, *extra])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    log_dir = cli.trainer.log_dir
    print(f"\nqerl demo: {cli.trainer.global_step} RL steps of {args.config}")
    print(summary(log_dir, args.window) if log_dir else "  (no logger: nothing to summarise)")
    if log_dir:
        print(f"TensorBoard logs: {log_dir}\n  view them with: tensorboard --logdir {os.path.dirname(log_dir)}")
        print(f"LoRA adapter: {os.path.join(log_dir, 'adapter', 'final')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
