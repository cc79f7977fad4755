"""Run some of a benchmark's rows in a child process of the same script, so one vLLM engine's memory is gone
before the next engine profiles the card (vLLM sizes its KV cache from what the card frees while it profiles;
an engine released in the same process can still be handing memory back then)."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile


def rows_from_child(script: str, argv: list[str], expected: list[dict]) -> list[dict]:
    """`python script --child <file> *argv`; the rows the child wrote, or `expected` marked failed."""
    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        done = subprocess.run([sys.executable, script, "--child", tmp.name, *argv], check=False)
        try:
            with open(tmp.name) as f:
                return json.load(f)
        except (ValueError, OSError):
            return [dict(row, status=f"child process failed (exit {done.returncode})") for row in expected]


def write_child_rows(path: str, rows: list[dict]) -> None:
    """The child's side: hand its rows back to the parent."""
    with open(path, "w") as f:
        json.dump(rows, f)
