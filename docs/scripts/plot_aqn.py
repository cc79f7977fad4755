"""Plot of the AQN noise schedules, drawn from the real registered `NOISE_SCHEDULERS` with their defaults.

    .venv/bin/python docs/scripts/plot_aqn.py docs/img/aqn-schedules.png
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plotting import cli, png

TOTAL_STEPS = 200


def schedules() -> list[tuple[str, object]]:
    """(name, instance) for every registered schedule that builds without arguments."""
    from qerl.registry import NOISE_SCHEDULERS

    found = []
    for entry in NOISE_SCHEDULERS.list():
        try:
            found.append((entry.name, entry.cls()))
        except TypeError:
            continue
    return found


def sigmas(schedule, total_steps: int = TOTAL_STEPS) -> list[float]:
    """sigma_at(step) for every step of a run."""
    return [schedule.sigma_at(step, total_steps) for step in range(total_steps)]


def render_png() -> bytes:
    """The figure as PNG bytes: linear and log scale side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [(name, sigmas(s)) for name, s in schedules()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0), dpi=110)
    for ax, scale in zip(axes, ("linear", "log")):
        for name, values in entries:
            shown = values if scale == "linear" else [v if v > 0 else float("nan") for v in values]
            ax.plot(range(TOTAL_STEPS), shown, label=name, lw=1.5, drawstyle="steps-post")
        ax.set_yscale(scale)
        ax.set(xlabel=f"optimizer step (of {TOTAL_STEPS})", ylabel="sigma",
               title=f"AQN sigma, defaults ({scale} scale{', zeros hidden' if scale == 'log' else ''})")
        ax.legend(fontsize=8)
    return png(fig)


if __name__ == "__main__":
    cli(render_png, "aqn-schedules.png")
