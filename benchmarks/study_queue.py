"""Run a study's processes on one machine inside a time budget: every training run at once, evaluations queued.

`run_study` starts every fit together and feeds evaluations from one queue: the `before` ones first, then each run's
after-evaluations as soon as that run's fit exits (not when the last fit ends). At most `width_training` evaluations
run while fits still train, `width` after; none starts after `budget_s`, and at `deadline_s` whatever still runs is
stopped (SIGTERM, then SIGKILL), so the caller can always write its results before a hard limit (a device call's
600 s) kills everything. Each process writes `<logs>/<tag>.log`.
"""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

Job = tuple[str, list[str]]  # (tag, command line)


@dataclass
class Budget:
    """When things may happen, in seconds from `start` (a `time.time()`)."""

    start: float
    budget_s: float  # no evaluation starts after this
    deadline_s: float  # what still runs then is stopped
    width: int = 4  # evaluations at once once every fit has ended
    width_training: int = 2  # evaluations at once while fits train
    grace_s: float = 5.0  # SIGTERM -> SIGKILL

    def elapsed(self) -> float:
        return time.time() - self.start


def launch(cmd: list[str], log: str, env: dict, cwd: str, gpu: int | None = None) -> subprocess.Popen:
    """Start `cmd` with stdout and stderr into `log` (on GPU `gpu` through CUDA_VISIBLE_DEVICES, if given)."""
    os.makedirs(os.path.dirname(log), exist_ok=True)
    if gpu is not None:
        env = dict(env, CUDA_VISIBLE_DEVICES=str(gpu))
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def stop(running: dict, codes: dict, timeline: dict, budget: Budget) -> None:
    """SIGTERM every process in `running` (a qerl fit finishes its step and saves it and its adapter), SIGKILL what
    is left after `budget.grace_s`; their exit code is recorded as "stopped"."""
    for proc in running.values():
        proc.terminate()
    end = time.time() + budget.grace_s
    for tag, proc in running.items():
        try:
            proc.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        codes[tag], timeline[tag][1] = "stopped", round(budget.elapsed(), 1)
    running.clear()


def run_study(fits: list[Job], before: list[Job], after: Callable[[str], list[Job]], budget: Budget, logs: str,
              env: dict, cwd: str, gpus: int = 1, on_fits_done: Callable[[dict, dict], None] | None = None,
              poll_s: float = 1.0) -> tuple[dict, dict]:
    """Run `fits` at once and the evaluations as the module docstring says; `after(fit_tag)` gives a fit's after-evaluations
    when it exits, `on_fits_done(codes, timeline)` is called once when the last fit has exited. Processes go
    round-robin over `gpus` GPUs. Returns (tag -> exit code: None never started, "stopped" at the deadline;
    tag -> [start_s, end_s] in seconds from `budget.start`)."""
    running: dict[str, subprocess.Popen] = {}
    codes: dict = {}
    timeline: dict[str, list] = {}

    def begin(tag: str, cmd: list[str]) -> None:
        gpu = len(timeline) % gpus if gpus > 1 else None
        running[tag] = launch(cmd, os.path.join(logs, f"{tag}.log"), env, cwd, gpu)
        timeline[tag] = [round(budget.elapsed(), 1), None]

    for tag, cmd in fits:
        begin(tag, cmd)
    fit_tags, training, queue = {tag for tag, _ in fits}, {tag for tag, _ in fits}, list(before)
    reported = not fits
    while running or (queue and budget.elapsed() < budget.budget_s):
        for tag, proc in list(running.items()):
            if proc.poll() is None:
                continue
            codes[tag], timeline[tag][1] = proc.returncode, round(budget.elapsed(), 1)
            del running[tag]
            if tag in training:
                training.discard(tag)
                queue += after(tag)
        if budget.elapsed() >= budget.deadline_s:
            stop(running, codes, timeline, budget)
            break
        width = budget.width_training if training else budget.width
        while queue and sum(t not in fit_tags for t in running) < width and budget.elapsed() < budget.budget_s:
            begin(*queue.pop(0))
        if not training and not reported:  # after the evals it queued have started
            reported = True
            if on_fits_done is not None:
                on_fits_done(dict(codes), {tag: list(span) for tag, span in timeline.items()})
        if running:
            time.sleep(poll_s)
    codes.update({tag: None for tag, _ in queue})
    return codes, timeline


def tails(logs: str, codes: dict, lines: int = 20) -> dict:
    """The last `lines` lines of `<logs>/<tag>.log` of every process that did not exit 0 (and left a log)."""
    result = {}
    for tag, code in codes.items():
        path = os.path.join(logs, f"{tag}.log")
        if code != 0 and os.path.isfile(path):
            with open(path, errors="replace") as f:
                result[tag] = [line.rstrip("\n") for line in f.readlines()[-lines:]]
    return result
