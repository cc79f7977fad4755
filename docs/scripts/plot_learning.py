"""Learning curves of the GPU runs (NVFP4 / bf16 LoRA, with and without AQN), from the committed results.

Reads the newest `benchmarks/results/learning-*.json` (written by `benchmarks/learning.py`) and draws train
accuracy, held-out accuracy, policy entropy and the AQN sigma over optimizer steps.

    .venv/bin/python docs/scripts/plot_learning.py docs/img/learning-smollm2.png
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
PANELS = (("train/accuracy", "train accuracy (64 sampled completions, 10-step mean)", 10),
          ("val/accuracy", "held-out accuracy (128 problems, greedy)", 1),
          ("train/entropy", "policy entropy (nats/token, 10-step mean)", 10),
          ("noise/sigma", "AQN sigma", 1))
STYLE = {"nvfp4-aqn": ("tab:red", "-"), "nvfp4": ("tab:red", "--"), "bf16": ("tab:blue", "--"),
         "bf16-aqn": ("tab:blue", "-")}


def latest() -> dict:
    files = sorted(RESULTS.glob("learning-*.json"))
    if not files:
        raise FileNotFoundError(f"no learning-*.json in {RESULTS}; run benchmarks/learning.py on a GPU first")
    return json.loads(files[-1].read_text())


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

    record = latest()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), dpi=110)
    for ax, (tag, title, window) in zip(axes.flat, PANELS):
        for run, curves in record["curves"].items():
            if tag not in curves:
                continue
            color, line = STYLE.get(run, ("gray", ":"))
            steps, values = smooth(curves[tag], window)
            ax.plot(steps, values, color=color, ls=line, lw=1.6, label=run,
                    marker="o" if tag == "val/accuracy" else None, ms=3)
        ax.set(title=title, xlabel="optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"SmolLM2-135M-Instruct, GRPO on 2-digit addition - {record['card']}, {record['date']}",
                 fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "learning-smollm2.png"
    with open(out, "wb") as fh:
        fh.write(render_png())
    print(out)
