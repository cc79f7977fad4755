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
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

MODELS = {"7b": {"hidden": 3584, "intermediate": 18944, "heads": 28, "kv_heads": 4, "layers": 28},
          "32b": {"hidden": 5120, "intermediate": 27648, "heads": 40, "kv_heads": 8, "layers": 64},
          "tiny": {"hidden": 64, "intermediate": 128, "heads": 2, "kv_heads": 1, "layers": 2}}  # CPU check of the script
DECODE = (1, 8, 16, 32, 64, 96, 128, 192, 256)
PREFILL = (2048, 8192, 16384)
ROTATE_BYTES, MAX_COPIES = 150 * 2**20, 128
TOLERANCE = {"shrink": 1e-3, "expand": 1e-2}  # max |candidate - default| over max |default|


@dataclass(frozen=True)
class Cell:
    """One op at one shape: what vLLM keys a config by, and the tensors it runs on."""
    op: str  # "shrink" | "expand"
    layer: str  # qkv, o, gate_up, down (expand: "o+down", the same shape)
    m: int
    k_in: int  # the layer's input width
    outs: tuple[int, ...]  # output width of each slice
    rank: int

    @property
    def key(self) -> tuple[int, int, int, int]:
        """(num_slices, m, k, n) as vLLM looks the config up."""
        k, n = (self.k_in, self.rank) if self.op == "shrink" else (self.rank, max(self.outs))
        return len(self.outs), self.m, k, n


def lora_layers(model: str) -> list[tuple[str, int, tuple[int, ...]]]:
    """(name, input width, output slices) of one decoder layer's LoRA layers as vLLM packs them."""
    s = MODELS[model]
    h, i, kv = s["hidden"], s["intermediate"], s["kv_heads"] * s["hidden"] // s["heads"]
    return [("qkv", h, (h, kv, kv)), ("o", h, (h,)), ("gate_up", h, (i, i)), ("down", i, (h,))]


def cells(model: str, rank: int, ms) -> list[tuple[Cell, int]]:
    """(cell, calls per decoder layer) for every m: 4 shrinks, 3 expands (o's and down's are one shape)."""
    out = []
    for m in ms:
        for name, k_in, outs in lora_layers(model):
            out.append((Cell("shrink", name, m, k_in, outs, rank), 1))
            if name != "down":
                out.append((Cell("expand", "o+down" if name == "o" else name, m, k_in, outs, rank),
                            2 if name == "o" else 1))
    return out


def candidates(cell: Cell, default: dict) -> list[dict]:
    """The configs to try (the default first): block sizes around the shape, shrink's split-K set so that each
    program walks 1, 2 or 4 blocks of K at decode sizes."""
    m, found = cell.m, [dict(default)]
    bms = (16,) if m <= 16 else (16, 32) if m <= 64 else (32, 64) if m <= 256 else (64, 128)
    if cell.op == "shrink":
        bns = tuple(b for b in (16, 32, 64) if b <= max(16, cell.rank))[-2:]
        splits = sorted({(bk, math.ceil(cell.k_in / (bk * it))) for bk in (64, 128, 256) for it in (1, 2, 4)}
                        if m <= 256 else {(bk, sk) for bk in (32, 64, 128) for sk in (1, 2, 4)})
        for bm in bms:
            for bn in bns:
                for bk, sk in splits:
                    stages = 2 if math.ceil(cell.k_in / (bk * sk)) == 1 else 3
                    found.append(dict(default, block_m=bm, block_n=bn, block_k=bk, split_k=sk, num_warps=4,
                                      num_stages=stages, num_ctas=1, group_size_m=8))
    else:
        bms = (16, 32, 64) if 16 < m <= 64 else (32, 64, 128) if 64 < m <= 256 else bms
        for bm in bms:
            for bn in (64, 128, 256):
                for warps in (4, 8):
                    found.append(dict(default, block_m=bm, block_n=bn, block_k=max(16, min(cell.rank, 64)),
                                      num_warps=warps, num_stages=2, num_ctas=1))
    unique = {json.dumps(c, sort_keys=True): c for c in found}
    return list(unique.values())


def compile_key(cell: Cell, config: dict) -> str:
    """What Triton compiles anew: the config and the shape, with m only as 1 / a multiple of 16 / other."""
    m_class = 1 if cell.m == 1 else 16 if cell.m % 16 == 0 else 0
    return json.dumps([cell.op, cell.k_in, cell.outs, cell.rank, m_class, config], sort_keys=True)


def vllm_ops():
    from vllm.lora.ops.triton_ops import lora_expand_op, lora_shrink_op, utils
    return lora_shrink_op, lora_expand_op, utils


def default_config(cell: Cell, max_loras: int = 1) -> dict:
    """vLLM's own default for the cell (its lookup with no folder set)."""
    _, _, utils = vllm_ops()
    slices, m, k, n = cell.key
    return dict(utils.get_lora_op_configs(cell.op, max_loras=max_loras + 1, batch=m,
                                          hidden_size=k if cell.op == "shrink" else n, rank=cell.rank,
                                          num_slices=slices, add_inputs=True if cell.op == "expand" else None))


class Tensors:
    """`copies` sets of (input, weights, output) of a cell on `device`, and the one-adapter kernel metadata."""

    def __init__(self, cell: Cell, dtype, device, copies: int = 1):
        import torch
        from vllm.lora.ops.triton_ops.lora_kernel_metadata import LoRAKernelMeta

        _, _, utils = vllm_ops()
        utils._LORA_A_PTR_DICT.clear()  # keyed by data_ptr: a freed cell's entries would match new tensors
        utils._LORA_B_PTR_DICT.clear()
        meta = LoRAKernelMeta.make(1, cell.m, device)
        meta.prepare_tensors(torch.zeros(cell.m, dtype=torch.int32, device=device))  # every token: adapter 0
        self.meta = meta.meta_args(cell.m, False)  # grid over max_loras + 1 slots, as the engine runs it
        gen, self.sets = torch.Generator(device).manual_seed(0), []
        for _ in range(copies):
            def randn(*shape, scale=1.0, dt=dtype):
                return (torch.randn(*shape, generator=gen, device=device) * scale).to(dt)
            if cell.op == "shrink":
                x = randn(cell.m, cell.k_in)
                w = [randn(1, 1, cell.rank, cell.k_in, scale=cell.k_in ** -0.5) for _ in cell.outs]
                out = torch.zeros(len(cell.outs), cell.m, cell.rank, dtype=torch.float32, device=device)
            else:
                x = randn(len(cell.outs), cell.m, cell.rank, dt=torch.float32)
                w = [randn(1, 1, n, cell.rank, scale=cell.rank ** -0.5) for n in cell.outs]
                out = randn(cell.m, sum(cell.outs))
            self.sets.append((x, w, out))
        self.y0 = self.sets[0][2].clone() if cell.op == "expand" else None

    def reference(self, cell: Cell, rows: int = 1024):
        """torch's result on copy 0 (the first `rows` tokens)."""
        import torch

        x, w, _ = self.sets[0]
        if cell.op == "shrink":
            return torch.stack([x[:rows].float() @ a[0, 0].float().T for a in w])
        return self.y0[:rows].float() + torch.cat([x[s, :rows] @ b[0, 0].float().T for s, b in enumerate(w)], 1)


@contextmanager
def forced(config: dict):
    """vLLM's ops take `config` whatever their lookup would answer."""
    shrink_op, expand_op, _ = vllm_ops()
    saved = shrink_op.get_lora_op_configs, expand_op.get_lora_op_configs
    shrink_op.get_lora_op_configs = expand_op.get_lora_op_configs = lambda *a, **k: config
    try:
        yield
    finally:
        shrink_op.get_lora_op_configs, expand_op.get_lora_op_configs = saved


def run(cell: Cell, t: Tensors, copy: int = 0) -> None:
    """One call of vLLM's op on copy `copy` (the config is whatever `forced` set)."""
    shrink_op, expand_op, _ = vllm_ops()
    x, w, out = t.sets[copy]
    if cell.op == "shrink":
        shrink_op._lora_shrink(x, w, out, *t.meta, 1.0)
    else:
        expand_op._lora_expand(x, w, out, *t.meta, offset_start=0, add_inputs=True)


def output_of(cell: Cell, t: Tensors, config: dict):
    """The op's output on copy 0 with `config` (expand starts from the same y each time)."""
    if t.y0 is not None:
        t.sets[0][2].copy_(t.y0)
    with forced(config):
        run(cell, t)
    return t.sets[0][2].clone()


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
