"""What a checkpoint adds for an exact resume: RNG states and how many prompt batches this epoch consumed."""
from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch


def capture_rng() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) generator states."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        # plain types and tensors only: Lightning loads checkpoints with torch.load(weights_only=True)
        state["numpy"] = (str(kind), torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached))
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what `capture_rng` saved (missing entries are left alone)."""
    if "python" in state:
        random.setstate(state["python"])
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_stateful(loader: Any) -> bool:
    """True when Lightning itself saves and restores the loader's position (it has state_dict/load_state_dict)."""
    return callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None))


def skip_batches(iterator: Iterator, count: int) -> int:
    """Draw and drop `count` batches; return how many were actually there."""
    skipped = 0
    for _ in range(count):
        try:
            next(iterator)
        except StopIteration:
            break
        skipped += 1
    return skipped


def rewind_fetch_count(dataloader_iter: Iterator) -> None:
    """Set Lightning's count of fetched batches back to 0 before the skip (which counts each batch again).

    On a restart Lightning starts its count at the batches the checkpointed epoch had run, though the fresh
    loader starts at the top; without this the skipped batches count twice and the resumed epoch ends early
    (with a wasted step when nothing is left). Lightning keeps the count on the iterator's fetcher.
    """
    fetcher = getattr(dataloader_iter, "data_fetcher", None)
    if fetcher is not None and isinstance(getattr(fetcher, "fetched", None), int):
        fetcher.fetched = 0
        fetcher.done = fetcher.length == 0 if fetcher.length is not None else False


def step_log_metrics(trainer: Any, fallback: dict[str, float]) -> dict[str, float]:
    """Every value of the current step that goes to the loggers (the module's and its callbacks', e.g. noise/sigma).

    Lightning keeps them in its logger connector until the step ends; without it, `fallback` (the module's own).
    """
    try:
        logged = trainer._logger_connector.metrics["log"]
    except (AttributeError, AssertionError, KeyError, TypeError):
        return dict(fallback)
    out = {k: float(v) for k, v in logged.items() if k not in ("epoch", "step")}
    return out or dict(fallback)


def resume_position(pending: dict[str, Any], epoch: int, loader: Any, dataloader_iter: Iterator) -> int:
    """Continue a run from its checkpoint's `qerl` entry; return the prompt batches drawn so far this epoch.

    Within the epoch the checkpoint was saved in, the batches it had drawn are skipped (unless Lightning
    restores a stateful loader itself); then the saved RNG states are put back, so the next rollout,
    dropout and shuffles match the uninterrupted run.
    """
    drawn = int(pending.get("batches_drawn", 0)) if pending.get("epoch") == epoch else 0
    if drawn and not is_stateful(loader):
        rewind_fetch_count(dataloader_iter)
        skip_batches(dataloader_iter, drawn)
    if "rng" in pending:
        restore_rng(pending["rng"])
    return drawn
