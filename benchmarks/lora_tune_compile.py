"""`lora_tune.py`'s compile workers: processes that run every candidate once, so Triton compiles it into its
on-disk cache (which the timing process then reads) on several cores."""
from __future__ import annotations

import multiprocessing
import time

from lora_tune_grid import Cell, compile_key
from lora_tune_ops import Tensors, output_of


def _compile_piece(args) -> list[tuple[str, str]]:
    """Worker: run each (cell, config) once so Triton compiles it into its cache; (compile key, error) of failures."""
    import torch

    piece, dtype, failed, last = args[0], getattr(torch, args[1]), [], None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for cell, config in piece:
        try:
            if last is None or last[0] != cell:
                last = (cell, Tensors(cell, dtype, device))
            output_of(cell, last[1], config)
            if device == "cuda":
                torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - a config Triton cannot build (shared memory, registers): skipped
            failed.append((compile_key(cell, config), f"{type(exc).__name__}: {str(exc)[:160]}"))
    return failed


def precompile(jobs: list[tuple[Cell, dict]], workers: int, dtype: str, deadline_s: float) -> set[str]:
    """Compile every job in `workers` processes (stopped at the deadline); the compile keys that failed."""
    if workers <= 0 or not jobs:
        return set()
    pieces = [jobs[i:i + 8] for i in range(0, len(jobs), 8)]
    failed, started = {}, time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:  # leaving it terminates the workers
        results = pool.imap_unordered(_compile_piece, [(p, dtype) for p in pieces])
        for _ in pieces:
            try:  # past the deadline the rest compiles in the timing process, under the budget
                failed.update(results.next(timeout=max(0.0, deadline_s - (time.perf_counter() - started))))
            except multiprocessing.TimeoutError:
                print(f"  compiling stopped at the deadline ({deadline_s:.0f} s)", flush=True)
                break
    for message in list(dict.fromkeys(failed.values()))[:3]:
        print(f"  did not build: {message}", flush=True)
    if len(failed) > len(jobs) // 2:  # the workers, not the configs, failed: let the timing process try them all
        print(f"  {len(failed)} of {len(jobs)} failed in the workers: ignored, compiling while timing", flush=True)
        return set()
    return set(failed)
