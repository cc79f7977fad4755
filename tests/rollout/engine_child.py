"""Run a GPU engine test's body in a child process: an engine released earlier in the suite's process made vLLM
refuse to start ("Error in memory profiling": free memory grew while it profiled), so each GPU engine twin builds its
engine in a fresh interpreter and prints a marker when its checks passed."""
from __future__ import annotations

import os
import subprocess
import sys


def run_engine_child(code: str, test_dir: str, marker: str, timeout: int = 500) -> str:
    """Run `code` (it finds the tests of `test_dir` on sys.argv[1]) and assert it printed `marker`; its stdout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code, test_dir], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)
    assert done.returncode == 0 and marker in done.stdout, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout
