"""The `qerl` command: Lightning subcommands (fit/validate/test) plus qerl's own tools.

`qerl fit|validate|test --config recipe.yaml` go through `QeRLCLI` (a LightningCLI
that loads plugins before parsing). `qerl list|quantize|eval|demo` are plain
commands, each in its own module under `qerl.commands`.
"""
from __future__ import annotations

import importlib
import sys

from qerl.commands import TOOLS


def run_tool(name: str, argv: list[str]) -> int:
    module, _, func = TOOLS[name].partition(":")
    return int(getattr(importlib.import_module(module), func)(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        argv = ["version", *argv[1:]]
    if argv and argv[0] in TOOLS:
        return run_tool(argv[0], argv[1:])
    from qerl.lightning_cli import run_lightning_cli

    return run_lightning_cli(argv)


if __name__ == "__main__":
    sys.exit(main())
