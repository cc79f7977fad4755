"""The worker process behind `VerifySandbox`: reads JSON lines `{"id", "source", "gold"}`, answers verdicts.

Run as `python -m qerl.rewards.verify_worker TIMEOUT_S MEMORY_MB`. Each item gets a
soft time limit (SIGALRM, raising an exception math-verify does not catch); the parent
kills the whole process if an item outlives the hard limit (C-level big-integer work
ignores signals). The address space is capped so runaway expressions fail with
MemoryError instead of swapping the machine.
"""
from __future__ import annotations

import json
import resource
import signal
import sys


class ItemTimeout(BaseException):
    """The soft limit; a BaseException so `except Exception` inside math-verify and sympy lets it through."""


_WARM_UP = (("so $x = \\frac{1}{2}$ and \\boxed{(1, 2)}", "(1,2)"), ("\\boxed{(x+1)^2}", "x^2+2x+1"),
            ("$\\sin^2 x + \\cos^2 x$", "1"), ("\\boxed{x \\ge 5}", "[5, \\infty)"))


def _on_alarm(signum, frame):
    raise ItemTimeout


def main(argv: list[str]) -> None:
    timeout_s = float(argv[0]) if argv else 1.0
    memory_mb = int(argv[1]) if len(argv) > 1 else 2048
    if memory_mb > 0:
        cap = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    sys.setrecursionlimit(3_000)
    signal.signal(signal.SIGALRM, _on_alarm)
    from qerl.rewards.math_judge import judge

    for source, gold in _WARM_UP:  # regexes, the LaTeX parser and sympy's simplify load lazily (~1 s at first use)
        judge(source, gold)
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
        except json.JSONDecodeError:
            continue
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            verdict = judge(str(request["source"]), str(request["gold"]))
        except ItemTimeout:
            verdict = "timeout"
        except MemoryError:
            verdict = "error"
        except Exception:  # noqa: BLE001 - any failure on model text is a wrong answer, never a crash
            verdict = "error"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        out.write(json.dumps({"id": request.get("id"), "verdict": verdict}) + "\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
