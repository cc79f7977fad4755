"""benchmarks/rollout.py checks its row specs before it needs a GPU (the rows themselves run on CUDA only)."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script():
    spec = importlib.util.spec_from_file_location("rollout_bench", os.path.join(ROOT, "benchmarks", "rollout.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("argv", "message"), [
    (["--rows", "7b:nvfp4:8"], "expected model:backend:batch:new"),
    (["--rows", "13b:nvfp4:8:512"], "model one of ['7b', '32b', '0.5b', 'smol']"),
    (["--rows", "7b:int3:8:512"], "backend one of"),
    (["--rows", "smol:bf16:8:512"], "model smol needs --gguf naming the SmolLM2 .gguf file (got None)"),
    (["--rows", "smol:bf16:8:512", "--gguf", "/no/such.gguf"], "(got '/no/such.gguf')"),
])
def test_bad_rows_are_named_before_any_work(monkeypatch, argv, message):
    script = load_script()
    monkeypatch.setattr(sys, "argv", ["rollout.py", *argv])
    with pytest.raises(SystemExit) as exc:
        script.main()
    assert message in str(exc.value)
