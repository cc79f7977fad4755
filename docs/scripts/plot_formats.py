"""Plot of the 4-bit formats' rounding grids and errors, made with the real registered quantizers.

Left: what one block does to a value x when the block's largest magnitude is 1 (the format's level grid).
Right: relative weight error ||W_hat - W|| / ||W|| on Gaussian and heavy-tailed (Student-t, 3 dof)
matrices. Every quantizer in `QUANTIZERS` (plugins too) that builds with its defaults is drawn.

    .venv/bin/python docs/scripts/plot_formats.py docs/img/formats-error.png
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plotting import cli, png

WIDTH = 128  # a multiple of every built-in block size (16, 32, 64) and of INT4's default group


def quantizers() -> list[tuple[str, object]]:
    """(name, instance) for every registered quantizer that builds without arguments."""
    from qerl.registry import QUANTIZERS

    found = []
    for entry in QUANTIZERS.list():
        try:
            found.append((entry.name, entry.cls()))
        except TypeError:  # needs arguments: nothing sensible to draw by default
            continue
    return found


def level_curve(quantizer, xs):
    """Dequantized x for a block whose other entries are +1 and -1 (so the block's range is [-1, 1])."""
    import torch

    w = torch.zeros(len(xs), WIDTH)
    w[:, 0] = xs
    w[:, 1], w[:, 2] = 1.0, -1.0
    return quantizer.quantize(w).dequantize(torch.float32)[:, 0]


def relative_error(quantizer, weight) -> tuple[float, float]:
    """(||W_hat - W|| / ||W||, stored bits per weight)."""
    import torch

    packed = quantizer.quantize(weight)
    error = (packed.dequantize(torch.float32) - weight).norm() / weight.norm()
    return float(error), packed.bits_per_weight


def render_png() -> bytes:
    """The figure as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    torch.manual_seed(0)  # StudentT samples from the global generator
    generator = torch.Generator().manual_seed(0)
    gaussian = torch.randn(128, 4096, generator=generator) * 0.02
    heavy = torch.distributions.StudentT(3.0).sample((128, 4096)) * 0.02
    xs = torch.linspace(-1, 1, 801)
    entries = quantizers()

    fig, (grid_ax, err_ax) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for name, q in entries:
        grid_ax.plot(xs, level_curve(q, xs), label=name, lw=1.3, drawstyle="steps-mid")
    grid_ax.plot(xs, xs, color="0.6", lw=0.8, ls="--", label="exact")
    grid_ax.set(title="One block, largest magnitude 1", xlabel="weight x", ylabel="dequantized x")
    grid_ax.legend(fontsize=8)

    labels, gauss_err, heavy_err = [], [], []
    for name, q in entries:
        g, bits = relative_error(q, gaussian)
        labels.append(f"{name}\n{bits:.2f} bits")
        gauss_err.append(g)
        heavy_err.append(relative_error(q, heavy)[0])
    pos = range(len(labels))
    err_ax.bar([p - 0.2 for p in pos], gauss_err, 0.4, label="Gaussian")
    err_ax.bar([p + 0.2 for p in pos], heavy_err, 0.4, label="Student-t (3 dof)")
    err_ax.set_xticks(list(pos), labels, fontsize=8)
    err_ax.set(title="Relative weight error, 128 x 4096", ylabel="||W_hat - W|| / ||W||")
    err_ax.legend(fontsize=8)
    return png(fig)


if __name__ == "__main__":
    cli(render_png, "formats-error.png")
