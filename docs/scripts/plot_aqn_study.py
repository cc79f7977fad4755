"""The AQN learning study of issue #33 (docs/learning.md, "AQN study"): per variant, the mean over seeds (bold)
and every seed (thin) of train accuracy, policy entropy, held-out validation accuracy and the noise the rows
really got (`noise/row_sigma`, the spread of Z/|w| over the targeted channels).

Reads `benchmarks/results/learning-smollm2-*-aqn-<task>-*.json` (written by `benchmarks/learning.py`, several
seeds per file) of the newest date; the task is the second argument (`study`: the 2-digit addition study, the
default; `addsub`: two 1-2 digit operands with + or -).

    .venv/bin/python docs/scripts/plot_aqn_study.py docs/img/aqn-study.png
    .venv/bin/python docs/scripts/plot_aqn_study.py docs/img/aqn-study-addsub.png addsub
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plot_learning import latest, smooth
from plotting import cli, png

STUDY = "learning-smollm2-*-aqn-study-*.json"
#: each study's files and what its title says it trained on
TASKS = {"study": (STUDY, "2-digit addition"),
         "addsub": ("learning-smollm2-*-aqn-addsub-*.json", "2-digit + and - (flexible reward)")}
PANELS = (("train/accuracy", "train accuracy (= the reward; 64 completions, 10-step mean)", 10, False),
          ("train/entropy", "policy entropy (nats/token, 10-step mean)", 10, False),
          ("val/accuracy", "validation accuracy (128 held-out problems, greedy)", 1, False),
          ("noise/row_sigma", "noise the rows got: spread of Z/|w| (log)", 1, True))
STYLE = {"bf16": ("tab:blue", "--"), "nvfp4": ("tab:red", "--"), "nvfp4-aqn": ("tab:red", "-"),
         "nvfp4-aqn-rel1": ("tab:green", "-"), "nvfp4-aqn-rel4": ("tab:purple", "-"), "bf16-aqn": ("tab:blue", "-")}


def by_variant(records: list[dict]) -> dict[str, dict[int, dict]]:
    """{variant: {seed: curves}} over the records' runs (`nvfp4-aqn-s2` -> variant `nvfp4-aqn`, seed 2)."""
    out: dict[str, dict[int, dict]] = {}
    for record in records:
        for run, curves in record["curves"].items():
            variant, _, seed = run.rpartition("-s")
            if seed.isdigit():
                out.setdefault(variant, {})[int(seed)] = curves
    return out


def seed_mean(series: list[tuple[list, list]]) -> tuple[list, list]:
    """Mean over seeds at each step that every seed reached (runs stop at different steps under a time cap)."""
    tables = [dict(zip(steps, values)) for steps, values in series]
    common = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
    return common, [sum(t[s] for t in tables) / len(tables) for s in common]


def draw(ax, seeds: dict[int, dict], tag: str, window: int, color: str, line: str, variant: str) -> None:
    """Every seed's curve thin, their mean bold."""
    series = [smooth(curves[tag], window) for curves in seeds.values() if curves.get(tag)]
    if not series:
        return
    for steps, values in series:
        ax.plot(steps, values, color=color, ls=line, lw=0.7, alpha=0.35)
    steps, values = seed_mean(series)
    ax.plot(steps, values, color=color, ls=line, lw=1.8, label=f"{variant} (mean of {len(series)} seeds)",
            marker="o" if tag == "val/accuracy" else None, ms=3)


def render_png(task: str = "study") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pattern, what = TASKS[task]
    records = latest(pattern)
    variants = by_variant(records)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), dpi=110)
    for ax, (tag, title, window, log) in zip(axes.flat, PANELS):
        for variant, seeds in variants.items():
            draw(ax, seeds, tag, window, *STYLE.get(variant, ("gray", ":")), variant)
        ax.set(title=title, xlabel="optimizer step", yscale="log" if log else "linear")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    card, date = records[0]["card"], records[0]["date"]
    fig.suptitle(f"AQN study: SmolLM2-135M-Instruct, GRPO on {what}, bf16 dense parts\n{card}, {date}; "
                 "thin = one seed", fontsize=10)
    return png(fig)


if __name__ == "__main__":
    task = sys.argv[2] if len(sys.argv) > 2 else "study"
    cli(lambda: render_png(task), f"aqn-{task}.png")
