"""Start `ddp_run.py` (1 process, or W ranks through Lightning's launcher) and collect what rank 0 wrote."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, *args: str, expect_kill: bool = False) -> dict:
    """Run ddp_run.py (its own session, so every rank it starts can be waited for); return rank 0's run.pt."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(key, None)
    proc = subprocess.Popen([sys.executable, str(HERE / "ddp_run.py"), "--out", str(out), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=600)  # an upper safety bound, not a timing
    finally:
        _reap(proc.pid)
    if expect_kill:
        assert proc.returncode == -signal.SIGKILL, log[-3000:]
    else:
        assert proc.returncode == 0, log[-3000:]
    return {**torch.load(out / "run.pt", weights_only=False), "log": log}


def _reap(session: int) -> None:
    """Wait for the ranks of a launch (same session) to exit; kill what is left after 60 s."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.killpg(session, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(session, signal.SIGKILL)
