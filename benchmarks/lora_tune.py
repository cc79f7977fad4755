"""Tune vLLM's Triton LoRA kernels (shrink, expand) for the shapes qerl's engines run; write the winners in the
folder format vLLM reads (`VLLM(lora_configs=DIR/lora-configs)`, see `qerl.rollout.vllm.lora_configs`).

For each model (Qwen2.5-7B, 32B), LoRA rank and token count m (decode: CUDA-graph batch sizes 1-256; prefill
chunks up to vLLM's 16,384-token budget on an H100), and each LoRA layer as vLLM packs it (qkv: 3 slices, gate_up:
2, o and down: 1; one adapter: max_loras 1, which vLLM keys as 2):
  - vLLM's own op (`_lora_shrink` / `_lora_expand`) runs with each candidate config in place of what
    `get_lora_op_configs` answers; its output must equal the default config's (allclose: shrink's fp32 1e-3,
    expand's bf16 1e-2 of the largest value), and the default's must equal torch's x @ A^T / y + s @ B^T;
  - time: one CUDA graph of calls, each on its own copy of the tensors (up to 128 copies, 150 MB in all: the weights
    come mostly from memory, as in the engine), replayed after a warm-up; the median replay over the calls, in us;
  - the fastest goes into the file if it beats the default by > 2% (re-timed side by side), else the default.
Triton compiles every candidate once; `--workers N` processes compile them first (into Triton's on-disk cache,
which the timing process reads), so compiling runs on N cores.

    python benchmarks/lora_tune.py --out DIR [--models 7b 32b] [--ranks 32] [--budget-s 240] [--plan]
writes DIR/lora-configs/<gpu>_SHRINK.json and <gpu>_EXPAND_TRUE.json (merged into what is there) and
DIR/lora-tune-<card>-<date>.json: default and tuned microseconds per shape, and per model the LoRA milliseconds of
one decode step at each m (layers x the 8 kernel calls of a layer) before and after. `--plan` prints the counts and a
time estimate without a GPU (7B r32: 84 cells, 2,055 timings, 634 kernels, ~1.5 min on an H100 host); `--models
tiny` runs the whole script on a CPU under TRITON_INTERPRET=1 (with vLLM's Triton switch forced on, as
tests/benchmarks/test_lora_tune.py does).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # lora_tune_grid, _ops, _compile, _cell, result_file

from lora_tune_cell import tune_cell
from lora_tune_compile import precompile
from lora_tune_grid import DECODE, MODELS, PREFILL, candidates, cells, compile_key
from lora_tune_ops import default_config


def step_ms(results: list[dict], layers: int, field: str) -> dict[int, float]:
    """LoRA milliseconds of one forward at each m with every cell of that m: layers x sum(calls x us)."""
    by_m: dict[int, list] = {}
    for r in results:
        by_m.setdefault(r["m"], []).append(r)
    return {m: round(layers * sum(r[field] * r["calls"] for r in rows) / 1000.0, 3)
            for m, rows in sorted(by_m.items()) if len(rows) == 7}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder: lora-configs/ and the JSON report go here")
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["7b", "32b"])
    ap.add_argument("--ranks", nargs="+", type=int, default=[32])
    ap.add_argument("--decode", nargs="+", type=int, default=list(DECODE))
    ap.add_argument("--prefill", nargs="+", type=int, default=list(PREFILL))
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    ap.add_argument("--workers", type=int, default=max(0, min(12, (os.cpu_count() or 2) - 2)),
                    help="processes that compile the candidates first (0: compile while timing)")
    ap.add_argument("--budget-s", type=float, default=240.0,
                    help="cells not started by then keep vLLM's default (written as such)")
    ap.add_argument("--plan", action="store_true", help="print the counts and exit (no GPU needed)")
    args = ap.parse_args()
    os.environ.pop("VLLM_TUNED_CONFIG_FOLDER", None)  # "default" = vLLM's built-in configs
    groups = [(model, rank, cells(model, rank, [*args.decode, *args.prefill]))
              for model in args.models for rank in args.ranks]
    jobs = {}
    for _, _, group in groups:
        for cell, _ in group:
            for config in candidates(cell, default_config(cell)):
                jobs.setdefault(compile_key(cell, config), (cell, config))
    n_cells = sum(len(g) for *_, g in groups)
    n_cand = sum(len(candidates(c, default_config(c))) for *_, g in groups for c, _ in g)
    print(f"plan: {n_cells} cells, {n_cand} candidate timings, {len(jobs)} distinct kernels to compile "
          f"({args.workers} workers); estimate (H100 host, ~0.6 s a compile, ~12 ms a timing): "
          f"~{len(jobs) * 0.6 / max(args.workers, 1) + n_cand * 0.012 + 30:.0f} s", flush=True)
    if args.plan:
        return
    import torch
    import triton
    import vllm
    from result_file import card_name, write_result  # benchmarks/ is on sys.path: this script's folder

    from qerl.rollout.vllm.lora_configs import write_configs

    started, dtype, gpu = time.perf_counter(), getattr(torch, args.dtype), card_name()
    failed = precompile(list(jobs.values()), args.workers, args.dtype, 0.6 * args.budget_s)
    compile_s = time.perf_counter() - started
    print(f"compiled in {compile_s:.0f} s ({len(failed)} did not build)", flush=True)
    report, entries, not_tuned = {}, {"shrink": [], "expand": []}, []
    for model, rank, group in groups:
        results = []
        for cell, calls in group:
            if time.perf_counter() - started > args.budget_s:
                default = default_config(cell)
                row = {**asdict(cell), "key": cell.key, "default_config": default, "config": default,
                       "not_tuned": "budget"}
                not_tuned.append(f"{model} r{rank} {cell.op} {cell.layer} m={cell.m}")
            else:
                row = tune_cell(cell, dtype, failed)
                if "not_tuned" in row:
                    not_tuned.append(f"{model} r{rank} {cell.op} {cell.layer} m={cell.m}: {row['not_tuned']}")
            row["calls"] = calls
            results.append(row)
            slices, m, k, n = cell.key
            entries[cell.op].append((1 + 1, slices, m, k, n, row["config"]))  # max_loras 1 -> vLLM's key 2
            if "tuned_us" in row:
                print(f"{model} r{rank} {cell.op:6s} {cell.layer:7s} m={cell.m:5d}: {row['default_us']:8.2f} -> "
                      f"{row['tuned_us']:8.2f} us", flush=True)
        timed = [r for r in results if "tuned_us" in r]
        layers = MODELS[model]["layers"]
        report[f"{model}-r{rank}"] = {"cells": results, "lora_ms_default": step_ms(timed, layers, "default_us"),
                                      "lora_ms_tuned": step_ms(timed, layers, "tuned_us")}
    folder = os.path.join(args.out, "lora-configs")
    files = [write_configs(folder, gpu, op, rows) for op, rows in entries.items()]
    row = write_result(args.out, "lora-tune", {
        "vllm": vllm.__version__, "triton": triton.__version__, "torch": torch.__version__, "dtype": args.dtype,
        "decode": args.decode, "prefill": args.prefill, "files": files, "compile_s": round(compile_s, 1),
        "total_s": round(time.perf_counter() - started, 1), "did_not_build": len(failed),
        "not_tuned": not_tuned, "models": report})
    print(f"{row['card']} {row['date']}: {files}; {row['total_s']} s; not tuned: {len(not_tuned)}")
    print("model | m | LoRA ms per forward, default | tuned | tuned/default")
    for name, got in report.items():
        for m, before in got["lora_ms_default"].items():
            after = got["lora_ms_tuned"][m]
            print(f"{name} | {m} | {before:.3f} | {after:.3f} | {after / before:.2f}")


if __name__ == "__main__":
    main()
