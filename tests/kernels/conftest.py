"""Kernel tests run the real Triton kernels: compiled on a CUDA machine, under TRITON_INTERPRET=1 elsewhere.

Triton decides interpretation when a kernel is decorated, so the kernel modules are (re)imported here
with the variable set. It stays set for the rest of the session (Triton reads it again lazily, e.g. when it
first launches a kernel); without CUDA no other code can run compiled Triton anyway.
"""
from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

KERNEL_MODULES = ("qerl.kernels.formats", "qerl.kernels.fused", "qerl.kernels.gemv", "qerl.kernels.dgrad",
                  "qerl.kernels.dequant", "qerl.kernels.rms_norm")


def _load_interpreted() -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    for name in KERNEL_MODULES:  # in dependency order: formats' helpers first
        if name in sys.modules:
            importlib.reload(sys.modules[name])
        else:
            importlib.import_module(name)


if not torch.cuda.is_available():
    _load_interpreted()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)
