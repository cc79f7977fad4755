"""One cell of `lora_tune.py`: every candidate's output checked against the default's (and the default's against
torch), the ones that match timed in a CUDA graph over rotating tensor copies, the fastest kept if it wins."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict

from lora_tune_grid import Cell, candidates, compile_key
from lora_tune_ops import Tensors, default_config, forced, output_of, run

ROTATE_BYTES, MAX_COPIES = 150 * 2**20, 128
TOLERANCE = {"shrink": 1e-3, "expand": 1e-2}  # max |candidate - default| over max |default|


def mismatch(cell: Cell, ref, got) -> float:
    """max |got - ref| over max |ref| (compare with TOLERANCE[cell.op])."""
    scale = ref.float().abs().max().item() or 1.0
    return (got.float() - ref.float()).abs().max().item() / scale


def time_us(cell: Cell, t: Tensors, config: dict, replays: int = 5) -> float:
    """Median microseconds per call: a CUDA graph of calls cycling over the copies, after a warm-up replay."""
    import torch

    calls = max(len(t.sets), 8)
    if not t.sets[0][0].is_cuda:  # the CPU check of the script (TRITON_INTERPRET=1): wall clock
        with forced(config):
            return _wall_us(cell, t)
    with forced(config):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run(cell, t)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(calls):
                run(cell, t, i % len(t.sets))
    graph.replay()
    start, end, times = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True), []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / calls)
    del graph
    return statistics.median(times)


def _wall_us(cell: Cell, t: Tensors) -> float:
    started = time.perf_counter()
    run(cell, t)
    return (time.perf_counter() - started) * 1e6


def cell_bytes(cell: Cell, size: int = 2) -> int:
    """Bytes of one copy of a cell's tensors (16-bit activations and weights, fp32 shrink output / expand input)."""
    slices, outs = len(cell.outs), sum(cell.outs)
    if cell.op == "shrink":
        return size * (cell.m * cell.k_in + slices * cell.rank * cell.k_in) + 4 * slices * cell.m * cell.rank
    return 4 * slices * cell.m * cell.rank + size * (outs * cell.rank + cell.m * outs)


def tune_cell(cell: Cell, dtype, failed: set[str]) -> dict:
    """Default and best config of one cell, their times, and every candidate's check."""
    import torch

    default = default_config(cell)
    on_cuda = torch.cuda.is_available()
    copies = max(1, min(MAX_COPIES, math.ceil(ROTATE_BYTES / cell_bytes(cell)))) if on_cuda else 1
    t = Tensors(cell, dtype, "cuda" if on_cuda else "cpu", copies)
    with forced(default):
        for i in range(len(t.sets)):
            run(cell, t, i)  # builds vLLM's pointer tables before any capture
    ref = output_of(cell, t, default)
    ref_err = mismatch(cell, t.reference(cell), ref[..., :1024, :] if cell.op == "shrink" else ref[:1024])
    row = {**asdict(cell), "key": cell.key, "default_config": default, "default_vs_torch": ref_err}
    if ref_err > TOLERANCE[cell.op]:  # the harness, not a config, is wrong: keep vLLM's default
        return {**row, "config": default, "not_tuned": f"default differs from torch by {ref_err:.2e}"}
    rows = [{"config": default, "us": time_us(cell, t, default), "err": 0.0}]
    for config in candidates(cell, default)[1:]:
        if compile_key(cell, config) in failed:
            rows.append({"config": config, "error": "did not compile (worker)"})
            continue
        try:
            err = mismatch(cell, ref, output_of(cell, t, config))
            us = time_us(cell, t, config) if err <= TOLERANCE[cell.op] else None
        except Exception as exc:  # noqa: BLE001 - a config that does not build is a row, not the end
            rows.append({"config": config, "error": f"{type(exc).__name__}: {str(exc)[:160]}"})
            continue
        rows.append({"config": config, "us": us, "err": err})
    timed = [r for r in rows if r.get("us") is not None]
    best = min(timed, key=lambda r: r["us"])
    pairs = [(time_us(cell, t, default), time_us(cell, t, best["config"])) for _ in range(2)]  # side by side
    default_us = statistics.median([rows[0]["us"], *(p[0] for p in pairs)])
    best_us = statistics.median([best["us"], *(p[1] for p in pairs)])
    won = best_us < 0.98 * default_us
    del t
    if on_cuda:
        torch.cuda.empty_cache()
    return {**row, "default_us": round(default_us, 2), "tuned_us": round(best_us if won else default_us, 2),
            "config": best["config"] if won else default, "candidates": len(rows),
            "did_not_build": sum("error" in r for r in rows), "differed": sum(r.get("us") is None for r in rows) -
            sum("error" in r for r in rows), "fastest": sorted(timed, key=lambda r: r["us"])[:3]}
