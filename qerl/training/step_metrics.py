"""What one training step reports: rollout, reward, data and performance metrics, namespaced for TensorBoard."""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

import torch

from qerl.training.scoring import Scored


class StepTimer:
    """Wall-clock seconds spent per phase (`rollout`, `score`, `train`) and in total; each phase is also a
    `torch.profiler` range named `step/<phase>`, so a profiled step shows its phases."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            with torch.profiler.record_function(f"step/{name}"):
                yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - begin

    def metrics(self) -> dict[str, float]:
        out = {f"perf/{k}_s": v for k, v in self.phases.items()}
        out["perf/step_s"] = time.perf_counter() - self.start
        return out


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated GPU memory on CUDA; the process's peak resident memory elsewhere (GB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        import resource

        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak_kb / (1e9 if sys.platform == "darwin" else 1e6)
    except (ImportError, OSError):
        return 0.0


def reward_metrics(scored: Scored) -> dict[str, float]:
    """reward/<name> (mean raw score), reward/total_mean and _std, train/accuracy."""
    out = {f"reward/{name}": float(score.mean()) for name, score in scored.scores.items()}
    out["reward/total_mean"] = float(scored.rewards.mean())
    out["reward/total_std"] = float(scored.rewards.std()) if scored.rewards.numel() > 1 else 0.0
    out["train/accuracy"] = float(scored.correct.float().mean())
    return out


def rollout_metrics(scored: Scored, rollout_seconds: float) -> dict[str, float]:
    """rollout/length_mean and _max, rollout/truncated_frac, rollout/tokens_per_s."""
    lengths = scored.rollout.lengths.float()
    tokens = float(lengths.sum())
    return {
        "rollout/length_mean": float(lengths.mean()),
        "rollout/length_max": float(lengths.max()),
        "rollout/truncated_frac": float(scored.rollout.truncated.float().mean()),
        "rollout/tokens_per_s": tokens / rollout_seconds if rollout_seconds > 0 else 0.0,
    }


def update_metrics(values: dict[str, float]) -> dict[str, float]:
    """The algorithm's and the update's metrics under `train/` (clip_fraction -> train/clip_frac); a key that
    already names its group (`rollout/mismatch_kl`, measured in the update) keeps it."""
    renamed = {"clip_fraction": "clip_frac"}
    return {k if "/" in k else f"train/{renamed.get(k, k)}": v for k, v in values.items()}
