"""What every docs plot script shares: a figure to PNG bytes, and the command line that writes one."""
from __future__ import annotations

import io
import sys
from collections.abc import Callable


def png(fig) -> bytes:
    """The figure laid out, as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def cli(render_png: Callable[[], bytes], default_name: str) -> None:
    """`python docs/scripts/<plot>.py [OUT.png]`: write the plot and print where."""
    out = sys.argv[1] if len(sys.argv) > 1 else default_name
    with open(out, "wb") as fh:
        fh.write(render_png())
    print(out)
