"""Learning curves of the GPU runs (NVFP4 / bf16 LoRA, with and without AQN), from the committed results.

Reads the `benchmarks/results/learning-smollm2-h100-2026-11-26*.json` files (the first study, written by
`benchmarks/learning.py`, one file per seed; the later AQN studies are drawn by `plot_aqn_study.py`) and draws train accuracy, held-out accuracy, policy entropy and the AQN sigma over optimizer
steps: the first seed bold, further seeds thin in the same colour and line style.

    .venv/bin/python docs/scripts/plot_learning.py docs/img/learning-smollm2.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plotting import cli, png

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
PANELS = (("train/accuracy", "train accuracy (64 sampled completions, 10-step mean)", 10),
          ("val/accuracy", "held-out accuracy (128 problems, greedy)", 1),
          ("train/entropy", "policy entropy (nats/token, 10-step mean)", 10),
          ("noise/sigma", "AQN sigma (as applied: noise/realized_sigma where logged)", 1))
STYLE = {"nvfp4-aqn": ("tab:red", "-"), "nvfp4": ("tab:red", "--"), "bf16": ("tab:blue", "--"),
         "bf16-aqn": ("tab:blue", "-")}


#: the files of the study this plot shows (docs/learning.md, "The first study")
STUDY = "learning-smollm2-h100-2026-11-26*.json"


def latest(pattern: str = STUDY) -> list[dict]:
    """The records of the newest date among the files matching `pattern`, in seed order."""
    records = [json.loads(f.read_text()) for f in sorted(RESULTS.glob(pattern))]
    if not records:
        raise FileNotFoundError(f"no {pattern} in {RESULTS}; run benchmarks/learning.py on a GPU first")
    newest = max(r["date"] for r in records)
    return sorted((r for r in records if r["date"] == newest), key=lambda r: r.get("args", {}).get("seed", 0))


def run_seed(run: str, record: dict, index: int) -> tuple[str, int, int]:
    """(variant, seed, 0 for the first seed) of a run: `nvfp4-aqn-s2` (several seeds in one file, newer
    benchmarks/learning.py) or `nvfp4-aqn` with the seed in the file's args (one file per seed)."""
    head, _, tail = run.rpartition("-s")
    if head in STYLE and tail.isdigit():
        return head, int(tail), int(tail != str(min(record.get("args", {}).get("seeds", [int(tail)]))))
    return run, record.get("args", {}).get("seed", 0), index


def smooth(points: list, window: int) -> tuple[list, list]:
    """Trailing mean over `window` points."""
    steps, values = [p[0] for p in points], [p[1] for p in points]
    out = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
           for i in range(len(values))]
    return steps, out


def render_png() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = latest()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), dpi=110)
    for ax, (tag, title, window) in zip(axes.flat, PANELS):
        for j, record in enumerate(records):
            for run, curves in record["curves"].items():
                if tag == "noise/sigma" and "noise/realized_sigma" in curves:
                    curves = {tag: curves["noise/realized_sigma"]}
                if tag not in curves:
                    continue
                variant, seed, i = run_seed(run, record, j)
                color, line = STYLE.get(variant, ("gray", ":"))
                steps, values = smooth(curves[tag], window)
                ax.plot(steps, values, color=color, ls=line, lw=1.6 if i == 0 else 0.9, alpha=1.0 if i == 0 else 0.55,
                        label=f"{run} (seed {seed})", marker="o" if tag == "val/accuracy" else None, ms=3 if i == 0 else 2)
        ax.set(title=title, xlabel="optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, ncol=2)
    first = records[0]
    fig.suptitle(f"SmolLM2-135M-Instruct, GRPO on 2-digit addition - {first['card']}, {first['date']}, "
                 f"{len(records)} seed(s): bold = seed {first.get('args', {}).get('seed', 0)}", fontsize=10)
    return png(fig)


if __name__ == "__main__":
    cli(render_png, "learning-smollm2.png")
