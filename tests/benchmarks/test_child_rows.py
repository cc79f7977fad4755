"""benchmarks/child_rows.py: a benchmark's rows run in a child process come back, and a crashed child is a row."""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from child_rows import rows_from_child

CHILD = f"""
import os, sys
sys.path.insert(0, {os.path.join(ROOT, "benchmarks")!r})
from child_rows import write_child_rows
path, rows = sys.argv[2], sys.argv[sys.argv.index("--rows") + 1:]
if "crash" in rows:
    raise SystemExit(3)
write_child_rows(path, [{{"spec": r, "pid": os.getpid(), "status": "ok"}} for r in rows])
"""


def test_rows_come_back_from_another_process(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text(CHILD)
    rows = rows_from_child(str(script), ["--rows", "7b:nvfp4:8:512", "7b:bf16:8:512"], [])
    assert [r["spec"] for r in rows] == ["7b:nvfp4:8:512", "7b:bf16:8:512"]
    assert {r["pid"] for r in rows} != {os.getpid()}
    assert all(r["status"] == "ok" for r in rows)


def test_a_child_that_dies_leaves_its_rows_marked_with_the_exit_code(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text(CHILD)
    rows = rows_from_child(str(script), ["--rows", "crash"], [{"model": "32b", "batch": 16}])
    assert rows == [{"model": "32b", "batch": 16, "status": "child process failed (exit 3)"}]
