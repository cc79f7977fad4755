"""math-verify verdicts in a killable worker process with a per-item time limit (the sandbox).

The trainer never imports math-verify or sympy: (answer text, gold) pairs go over a pipe to
`python -m qerl.rewards.verify_worker`. If the worker does not answer within
`timeout_s` (+ a grace second) it is killed and restarted on the next call;
that item's verdict is "timeout" (scored 0).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from typing import ClassVar

log = logging.getLogger(__name__)

EQUAL, DIFFERENT, NO_ANSWER, GOLD_ERROR, TIMEOUT, ERROR = (
    "equal", "different", "no_answer", "gold_error", "timeout", "error")
GRACE_S = 1.0


class VerifySandbox:
    """Judges answers with math-verify in a child process (`qerl.rewards.math_judge.judge`).

    Args:
        timeout_s: time limit per pair (soft inside the worker, hard = timeout_s + 1 s).
        memory_mb: address-space cap of the worker (0 = none).
        startup_timeout_s: how long the first start (importing math-verify and sympy) may take.
    """

    def __init__(self, timeout_s: float = 1.0, memory_mb: int = 2048, startup_timeout_s: float = 120.0) -> None:
        self.timeout_s = float(timeout_s)
        self.memory_mb = int(memory_mb)
        self.startup_timeout_s = float(startup_timeout_s)
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._buffer = b""
        self._next_id = 0
        self._lock = threading.Lock()
        atexit.register(self.close)

    _shared: ClassVar[dict[tuple[float, int], VerifySandbox]] = {}

    @classmethod
    def shared(cls, timeout_s: float = 1.0, memory_mb: int = 2048) -> VerifySandbox:
        """One checker (one worker process) per setting, shared by every reward in this process."""
        key = (float(timeout_s), int(memory_mb))
        if key not in cls._shared:
            cls._shared[key] = cls(timeout_s=timeout_s, memory_mb=memory_mb)
        return cls._shared[key]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_proc=None, _buffer=b"", _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def judge(self, source: str, gold: str) -> str:
        """EQUAL, DIFFERENT, NO_ANSWER, GOLD_ERROR, TIMEOUT or ERROR for the answer `source` states."""
        with self._lock:
            try:
                self._ensure_started()
            except RuntimeError as exc:
                log.warning("%s; scoring this answer 0.", exc)
                return ERROR
            self._next_id += 1
            request = json.dumps({"id": self._next_id, "source": source, "gold": gold}) + "\n"
            try:
                self._proc.stdin.write(request.encode())
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._kill()
                return ERROR
            reply = self._read_line(self.timeout_s + GRACE_S)
            if reply is None:
                self._kill()
                return TIMEOUT
            try:
                message = json.loads(reply)
            except json.JSONDecodeError:
                self._kill()
                return ERROR
            if message.get("id") != self._next_id:
                self._kill()
                return ERROR
            return str(message.get("verdict", ERROR))

    def close(self) -> None:
        """Stop the worker (it is started again on the next `judge`)."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
        self._proc = None

    # ----------------------------------------------------------------- process
    def _ensure_started(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        if self._proc is not None:
            self.restarts += 1
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
        env["OMP_NUM_THREADS"] = "1"
        self._buffer = b""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "qerl.rewards.verify_worker", str(self.timeout_s), str(self.memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        )
        ready = self._read_line(self.startup_timeout_s)
        if ready is None or "ready" not in ready:
            self._kill()
            raise RuntimeError(
                f"the answer checker (python -m qerl.rewards.verify_worker) did not start within "
                f"{self.startup_timeout_s:.0f} s; is math-verify installed in {sys.executable}? "
                "(pip install 'math-verify==0.9.0')"
            )

    def _read_line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:  # the worker died
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (self._proc.stdin, self._proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        self._buffer = b""
