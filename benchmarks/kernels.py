"""W4A16 kernel benchmark: qerl's Triton kernels vs cuBLAS bf16 and vs "dequantize then matmul".

Formats x Qwen2.5-7B/32B projection shapes (+ 8192x8192) x M, forward ("fwd") and input gradient
("dgrad"); for M >= 1024 also their sum ("fwd+dgrad"). Every time is the median over replays of a
CUDA graph that runs the op many times while rotating over enough weight copies (>= 200 MB) that
L2 (50 MB) cannot serve them; the three contenders are timed the same way in the same process.

    PYTHONPATH=. python benchmarks/kernels.py --out benchmarks/results   # on the GPU machine

Writes ``kernels-<card>-<date>.json`` (one record per row) and prints the table last.
"""
# The timed lambdas close over loop variables on purpose: each is captured into a CUDA graph and replayed
# within the same iteration.
# ruff: noqa: B023
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = {  # name: (K = in_features, N = out_features)
    "32b.gate_up": (5120, 27648), "32b.down": (27648, 5120), "8192": (8192, 8192),
    "32b.q_o": (5120, 5120), "32b.k_v": (5120, 1024),
    "7b.gate_up": (3584, 18944), "7b.down": (18944, 3584), "7b.q_o": (3584, 3584), "7b.k_v": (3584, 512),
}
TARGET_SHAPES = ("32b.gate_up", "32b.down", "8192")
ROTATE_BYTES = 200 * 2**20


def time_graph(calls, iters: int, replays: int = 9) -> float:
    """Median microseconds per call: a CUDA graph of ``iters`` calls cycling through ``calls``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for c in calls[:2]:
            c()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(iters):
            calls[i % len(calls)]()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / iters)
    del graph
    return statistics.median(times)


def copies_for(nbytes: int) -> int:
    return max(1, min(256, math.ceil(ROTATE_BYTES / max(nbytes, 1))))


def make_layers(fmt: str, k: int, n: int):
    from qerl.kernels import _absmax_for_kernel, ops
    from qerl.quantizers import MXFP4, NF4, NVFP4
    from qerl.quantizers.layers import QuantLinear

    quantizer = {"nvfp4": NVFP4, "mxfp4": MXFP4, "nf4": NF4}[fmt]()
    w = torch.randn(n, k, device="cuda") * 0.02
    layer = QuantLinear.from_quantized(quantizer.quantize(w)).cuda()
    scales = ops._scales_arg(_absmax_for_kernel(layer) if fmt == "nf4" else layer.scales)
    g = layer.global_scale if fmt == "nvfp4" else None
    packed = layer.codes.numel() + scales.numel() * scales.element_size()
    r = copies_for(packed)
    weights = [(layer.codes.clone(), scales.clone()) for _ in range(r)]
    return layer, weights, g, packed


GEMV_CONFIGS = {"n256g2w4": {"BLOCK_N": 256, "NG": 2, "num_warps": 4},
                "n128g2w4": {"BLOCK_N": 128, "NG": 2, "num_warps": 4}}


def bench_shape(fmt, name, k, n, ms, passes, fused_max_m):
    from qerl.kernels import dequant, dgrad, fused, gemv, ops
    from qerl.kernels.formats import FORMAT_IDS

    fid = FORMAT_IDS[fmt]
    layer, weights, g, packed = make_layers(fmt, k, n)
    block = layer.block_size
    w32 = layer.dequantize(torch.float32)
    wbf = w32.to(torch.bfloat16)
    bf_copies = [wbf.clone() for _ in range(copies_for(wbf.numel() * 2))]
    rows = []
    for m in ms:
        x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
        gy = torch.randn(m, n, device="cuda").to(torch.bfloat16)
        per = {}
        for p in passes:
            if p == "fwd":
                op = [lambda c=c, s=s: ops.w4a16_linear(x, c, s, g, None, fmt, block) for c, s in weights]
                base = [lambda wb=wb: F.linear(x, wb) for wb in bf_copies]
                deq = [lambda c=c, s=s: F.linear(x, dequant.dequantize_into(c, s, g, fid, block, k, x.dtype))
                       for c, s in weights]
                fz = [lambda c=c, s=s: fused.fused_linear(x, c, s, g, fid, block, None) for c, s in weights]
                out, ref = op[0](), x.float() @ w32.T
                act = (m * k + m * n) * 2
            else:
                op = [lambda c=c, s=s: ops.w4a16_dgrad(gy, c, s, g, fmt, block, k) for c, s in weights]
                base = [lambda wb=wb: gy @ wb for wb in bf_copies]
                deq = [lambda c=c, s=s: gy @ dequant.dequantize_into(c, s, g, fid, block, k, gy.dtype)
                       for c, s in weights]
                fz = [lambda c=c, s=s: dgrad.fused_dgrad(gy, c, s, g, fid, block, k) for c, s in weights]
                out, ref = op[0](), gy.float() @ w32
                act = (m * k + m * n) * 2
            err = ((out.float() - ref).norm() / ref.norm()).item()
            iters = max(len(op), 20)
            gemv_us, gemv_err = {}, None
            if p == "fwd" and m <= gemv.GEMV_MAX_M:
                for cname, cfg in GEMV_CONFIGS.items():
                    gv = [lambda c=c, s=s, cfg=cfg: gemv.gemv_linear(x, c, s, g, fid, block, None, config=cfg)
                          for c, s in weights]
                    yg = gv[0]().float()
                    gemv_err = max(gemv_err or 0.0, ((yg - ref).norm() / ref.norm()).item())
                    gemv_us[cname] = round(time_graph(gv, iters), 2)
            us = time_graph(op, iters)
            bf_us = time_graph(base, max(len(base), 20))
            dq_us = time_graph(deq, iters)
            fz_us = time_graph(fz, iters) if m <= fused_max_m else None
            rec = dict(format=fmt, shape=name, K=k, N=n, M=m, **{"pass": p}, us=round(us, 2), bf16_us=round(bf_us, 2),
                       speedup=round(bf_us / us, 3), deq_mm_us=round(dq_us, 2), speedup_vs_deq_mm=round(dq_us / us, 3),
                       fused_us=None if fz_us is None else round(fz_us, 2),
                       **({"gemv_us": gemv_us, "gemv_rel_err": float(f"{gemv_err:.3g}")} if gemv_us else {}),
                       path="fused" if m <= (ops.FUSED_MAX_M if p == "fwd" else ops.DGRAD_FUSED_MAX_M)[fmt] else "deq+cublas",
                       tbps=round((packed + act) / us / 1e6, 3), bf16_tbps=round((n * k * 2 + act) / bf_us / 1e6, 3),
                       rel_err=float(f"{err:.3g}"))
            rows.append(rec)
            per[p] = rec
        if m >= 1024 and "fwd" in per and "dgrad" in per:
            us = per["fwd"]["us"] + per["dgrad"]["us"]
            bf = per["fwd"]["bf16_us"] + per["dgrad"]["bf16_us"]
            rows.append(dict(format=fmt, shape=name, K=k, N=n, M=m, **{"pass": "fwd+dgrad"}, us=round(us, 2),
                             bf16_us=round(bf, 2), speedup=round(bf / us, 3), time_ratio=round(us / bf, 3)))
    return rows


GEMV_VARIANT_CONFIGS = {"n256g2w4": {"BLOCK_N": 256, "NG": 2, "num_warps": 4},
                        "n128g2w4": {"BLOCK_N": 128, "NG": 2, "num_warps": 4},
                        "n512g2w8": {"BLOCK_N": 512, "NG": 2, "num_warps": 8},
                        "n256g2w4k1": {"BLOCK_N": 256, "NG": 2, "num_warps": 4, "SPLIT_K": 1}}
# tiles of the fused kernel tried against its default rule (kernels-notes.md, v6); split K stays the rule's
FUSED_VARIANT_CONFIGS = {"n128g4w8": {"BLOCK_N": 128, "NG": 4, "num_warps": 8},
                         "n128g4w4": {"BLOCK_N": 128, "NG": 4, "num_warps": 4},
                         "n128g8w8": {"BLOCK_N": 128, "NG": 8, "num_warps": 8},
                         "n64g8w4": {"BLOCK_N": 64, "NG": 8, "num_warps": 4},
                         "n256g4w8": {"BLOCK_N": 256, "NG": 4, "num_warps": 8}}
GEMV_VARIANT_SHAPES = ("32b.gate_up", "32b.down", "8192", "7b.gate_up")


def bench_gemv_variants(fmt, name, k, n, ms) -> list:
    """Forward only: gemv (a few configs), the fused tensor-core kernel (its rule, and a few tiles) and cuBLAS bf16,
    all timed the same way in this process; one record per (kernel, config), field "kernel"."""
    from qerl.kernels import fused, gemv
    from qerl.kernels.formats import FORMAT_IDS

    fid = FORMAT_IDS[fmt]
    layer, weights, g, packed = make_layers(fmt, k, n)
    block = layer.block_size
    w32 = layer.dequantize(torch.float32)
    bf_copies = [w32.to(torch.bfloat16) for _ in range(copies_for(n * k * 2))]
    del w32
    rows = []
    for m in ms:
        x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
        ref = x.float() @ layer.dequantize(torch.float32).T
        cands = {("cublas_bf16", ""): [lambda wb=wb: F.linear(x, wb) for wb in bf_copies],
                 ("fused", ""): [lambda c=c, s=s: fused.fused_linear(x, c, s, g, fid, block, None) for c, s in weights]}
        for cname, tile in FUSED_VARIANT_CONFIGS.items():
            cfg = dict(fused.pick_config(m, n, k, fid, torch.cuda.get_device_properties(0).multi_processor_count), **tile)
            cands[("fused", cname)] = [lambda c=c, s=s, cfg=cfg: fused.fused_linear(x, c, s, g, fid, block, None, config=cfg)
                                       for c, s in weights]
        for cname, cfg in GEMV_VARIANT_CONFIGS.items():
            cands[("gemv", cname)] = [lambda c=c, s=s, cfg=cfg: gemv.gemv_linear(x, c, s, g, fid, block, None, config=cfg)
                                      for c, s in weights]
        res = {}
        for (kern, cname), calls in cands.items():
            try:
                out = calls[0]()
                err = ((out.float() - ref).norm() / ref.norm()).item()
                us = time_graph(calls, max(len(calls), 20))
            except Exception as exc:  # noqa: BLE001 - a config that does not compile is recorded, not fatal
                rows.append({"format": fmt, "shape": name, "K": k, "N": n, "M": m, "kernel": kern, "config": cname,
                             "error": str(exc)[:300]})
                continue
            res[(kern, cname)] = us
            nbytes = (n * k * 2 if kern == "cublas_bf16" else packed) + (m * k + m * n) * 2
            rows.append({"format": fmt, "shape": name, "K": k, "N": n, "M": m, "kernel": kern, "config": cname,
                         "us": round(us, 2), "tbps": round(nbytes / us / 1e6, 3), "rel_err": float(f"{err:.3g}")})
        bf = res.get(("cublas_bf16", ""))
        for r in rows:
            if r["M"] == m and r["shape"] == name and r["format"] == fmt and "us" in r and bf:
                r["x_bf16"] = round(bf / r["us"], 3)
        line = " ".join(f"{kk}{'/' + c if c else ''}={v:.1f}" for (kk, c), v in res.items())
        print(f"{fmt} {name} M={m}: {line}", flush=True)
    del layer, weights, bf_copies
    torch.cuda.empty_cache()
    return rows


def gemv_table(rows) -> str:
    lines = [f"{'fmt':6} {'shape':12} {'M':>3} {'kernel':12} {'config':11} {'us':>8} {'x_bf16':>7} {'TB/s':>6} {'err':>8}"]
    for r in rows:
        if "us" not in r:
            lines.append(f"{r['format']:6} {r['shape']:12} {r['M']:>3} {r['kernel']:12} {r['config']:11} error: {r['error'][:60]}")
            continue
        lines.append(f"{r['format']:6} {r['shape']:12} {r['M']:>3} {r['kernel']:12} {r['config']:11} {r['us']:>8.1f} "
                     f"{r.get('x_bf16', float('nan')):>7.2f} {r['tbps']:>6.2f} {r['rel_err']:>8.2g}")
    return "\n".join(lines)


FWD_CANDIDATES = [{"BLOCK_N": 128, "NG": 8, "num_warps": 8, "num_stages": 3}, {"BLOCK_N": 64, "NG": 8, "num_warps": 4, "num_stages": 4},
                  {"BLOCK_N": 128, "NG": 4, "num_warps": 8, "num_stages": 4}, {"BLOCK_N": 256, "NG": 4, "num_warps": 8, "num_stages": 3},
                  {"BLOCK_N": 64, "NG": 16, "num_warps": 4, "num_stages": 3}]
DGRAD_CANDIDATES = [{"BLOCK_R": 64, "NG": 8, "num_warps": 8, "num_stages": 3}, {"BLOCK_R": 128, "NG": 4, "num_warps": 8, "num_stages": 3},
                    {"BLOCK_R": 64, "NG": 4, "num_warps": 4, "num_stages": 4}, {"BLOCK_R": 32, "NG": 16, "num_warps": 8, "num_stages": 3}]


def tune(formats, name="32b.gate_up", ms=(16, 64)) -> list:
    """Pick tile configs per (format, BLOCK_M bucket) on one large layer; installs them in fused/dgrad.TUNED."""
    from qerl.kernels import dgrad, fused
    from qerl.kernels.formats import FORMAT_IDS

    k, n = SHAPES[name]
    log = []
    for fmt in formats:
        fid = FORMAT_IDS[fmt]
        layer, weights, g, _ = make_layers(fmt, k, n)
        block = layer.block_size
        for m in ms:
            bm = 16 if m <= 16 else 64
            x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
            gy = torch.randn(m, n, device="cuda").to(torch.bfloat16)
            for mod, cands, run in (
                (fused, FWD_CANDIDATES, lambda c, s: fused.fused_linear(x, c, s, g, fid, block, None)),
                (dgrad, DGRAD_CANDIDATES, lambda c, s: dgrad.fused_dgrad(gy, c, s, g, fid, block, k)),
            ):
                best = None
                for cand in cands:
                    mod.TUNED[(fid, bm)] = cand
                    try:
                        us = time_graph([lambda c=c, s=s: run(c, s) for c, s in weights], max(len(weights), 20), replays=5)
                    except Exception as exc:  # noqa: BLE001 - a config that does not compile is skipped, not fatal
                        log.append({"format": fmt, "M": m, "kernel": mod.__name__, "config": cand, "error": str(exc)[:200]})
                        continue
                    log.append({"format": fmt, "M": m, "kernel": mod.__name__, "config": cand, "us": round(us, 2)})
                    if best is None or us < best[0]:
                        best = (us, cand)
                mod.TUNED[(fid, bm)] = best[1]
                print(f"tune {fmt} M={m} {mod.__name__.split('.')[-1]}: {best[1]} {best[0]:.1f} us", flush=True)
        del layer, weights
        torch.cuda.empty_cache()
    return log


def copy_bandwidth() -> float:
    a = torch.empty(2**30 // 2, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    us = time_graph([lambda: b.copy_(a)], 10)
    return 2 * a.numel() * 2 / us / 1e6


def table(rows) -> str:
    head = f"{'fmt':6} {'shape':12} {'K':>6} {'N':>6} {'M':>5} {'pass':9} {'us':>9} {'bf16_us':>9} {'x_bf16':>7} " \
           f"{'deq_us':>9} {'x_deq':>6} {'fused_us':>9} {'TB/s':>6} {'err':>8}"
    lines = [head]
    for r in rows:
        fz = r.get("fused_us")
        lines.append(f"{r['format']:6} {r['shape']:12} {r['K']:>6} {r['N']:>6} {r['M']:>5} {r['pass']:9} {r['us']:>9.1f} "
                     f"{r['bf16_us']:>9.1f} {r['speedup']:>7.2f} {r.get('deq_mm_us', float('nan')):>9.1f} "
                     f"{r.get('speedup_vs_deq_mm', float('nan')):>6.2f} {'' if fz is None else f'{fz:.1f}':>9} "
                     f"{r.get('tbps', float('nan')):>6.2f} {r.get('rel_err', float('nan')):>8.2g}")
    return "\n".join(lines)


def sweep(shapes, formats, bench, path: str, meta: dict, t0: float, budget_s: float) -> list:
    """bench(fmt, name, K, N) for every shape and format until `budget_s`; the JSON is rewritten after each."""
    rows, skipped = [], []
    for name in shapes:
        for fmt in formats:
            if time.time() - t0 > budget_s:
                skipped.append(f"{fmt}:{name}")
                continue
            k, n = SHAPES[name]
            rows += bench(fmt, name, k, n)
            torch.cuda.empty_cache()
            with open(path, "w") as fh:
                json.dump({"meta": meta, "skipped": skipped, "records": rows}, fh, indent=1)
            print(f"[{time.time() - t0:6.1f}s] {fmt} {name} done", flush=True)
    with open(path, "w") as fh:
        json.dump({"meta": meta, "skipped": skipped, "records": rows}, fh, indent=1)
    print(json.dumps(meta), "skipped:", skipped)
    return rows


GROUP_SHAPES = {  # name: (K, out features of the projections sharing the input, bias)
    "7b.qkv": (3584, (3584, 512, 512), True), "7b.gate_up": (3584, (18944, 18944), False),
    "32b.qkv": (5120, (5120, 1024, 1024), True), "32b.gate_up": (5120, (27648, 27648), False),
}


def bench_group(formats, ms) -> list:
    """Projections sharing an input: one `quant_linear_group` launch vs one `quant_linear` per layer."""
    from qerl.kernels import quant_linear, quant_linear_group
    from qerl.quantizers import MXFP4, NF4, NVFP4
    from qerl.quantizers.layers import QuantLinear

    rows = []
    for fmt in formats:
        quantizer = {"nvfp4": NVFP4, "mxfp4": MXFP4, "nf4": NF4}[fmt]()
        for name, (k, ns, bias) in GROUP_SHAPES.items():
            layers = [QuantLinear.from_quantized(quantizer.quantize(torch.randn(n, k, device="cuda") * 0.02),
                                                 bias=torch.randn(n, device="cuda").to(torch.bfloat16) if bias else None).cuda()
                      for n in ns]
            for m in ms:
                x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
                grouped = quant_linear_group(x, layers)
                if grouped is None:
                    continue
                sep = time_graph([lambda: [quant_linear(x, lay) for lay in layers]], 20)
                grp = time_graph([lambda: quant_linear_group(x, layers)], 20)
                a = torch.cat([quant_linear(x, lay) for lay in layers], 1).float()
                diff = ((a - torch.cat(grouped, 1).float()).norm() / a.norm()).item()
                rows.append({"format": fmt, "shape": name, "K": k, "N": sum(ns), "M": m, "separate_us": round(sep, 2),
                             "grouped_us": round(grp, 2), "speedup": round(sep / grp, 3),
                             "rel_diff": float(f"{diff:.2g}")})
                print(f"{fmt} {name} M={m}: separate {sep:.1f} us, grouped {grp:.1f} us ({sep / grp:.2f}x)", flush=True)
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="nvfp4,mxfp4,nf4")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--ms", default="1,4,16,64,256,1024,4096")
    ap.add_argument("--passes", default="fwd,dgrad")
    ap.add_argument("--fused-max-m", type=int, default=256, help="also time the fused kernel alone up to this M")
    ap.add_argument("--budget-s", type=float, default=1e9, help="stop starting new shapes after this many seconds")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tune", action="store_true", help="first pick tile configs per format and M bucket")
    ap.add_argument("--gemv-variants", action="store_true",
                    help="instead: forward gemv configs / fused / cuBLAS bf16 at small M on --shapes "
                         "(default here: the GEMV target shapes) and --ms (default here: 1,2,4,8,16)")
    ap.add_argument("--group", action="store_true",
                    help="instead: grouped q|k|v and gate|up launches vs one launch per layer (--ms default 8,16,64)")
    args = ap.parse_args()
    torch.manual_seed(0)
    card = torch.cuda.get_device_name().replace("NVIDIA ", "").split()[0].lower()
    path = os.path.join(args.out, f"kernels-{card}-{datetime.date.today().isoformat()}.json")
    os.makedirs(args.out, exist_ok=True)
    meta = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "date": datetime.datetime.now(datetime.UTC).isoformat(),
                "copy_tbps": round(copy_bandwidth(), 3)}
    import triton

    meta["triton"] = triton.__version__
    t0 = time.time()
    if args.group:
        ms = [int(v) for v in args.ms.split(",")] if args.ms != "1,4,16,64,256,1024,4096" else [8, 16, 64]
        rows = bench_group(args.formats.split(","), ms)
        path = os.path.join(args.out, f"kernels-group-{card}-{datetime.date.today().isoformat()}.json")
        with open(path, "w") as f:
            json.dump({"meta": meta, "records": rows}, f, indent=1)
        print(f"wrote {path}")
        return
    if args.gemv_variants:
        shapes = args.shapes.split(",") if args.shapes != ",".join(SHAPES) else list(GEMV_VARIANT_SHAPES)
        ms = [int(v) for v in args.ms.split(",")] if args.ms != "1,4,16,64,256,1024,4096" else [1, 2, 4, 8, 16]
        path = os.path.join(args.out, f"kernels-gemv-{card}-{datetime.date.today().isoformat()}.json")
        rows = sweep(shapes, args.formats.split(","), lambda fmt, name, k, n: bench_gemv_variants(fmt, name, k, n, ms),
                     path, meta, t0, args.budget_s)
        print(gemv_table(rows))
        return
    if args.tune:
        meta["tuning"] = tune(args.formats.split(","))
        from qerl.kernels import dgrad, fused

        meta["tuned"] = {"fused": {str(k): v for k, v in fused.TUNED.items()},
                             "dgrad": {str(k): v for k, v in dgrad.TUNED.items()}}
        print(f"[{time.time() - t0:6.1f}s] tuning done", flush=True)
    ms = [int(v) for v in args.ms.split(",")]
    rows = sweep(args.shapes.split(","), args.formats.split(","),
                 lambda fmt, name, k, n: bench_shape(fmt, name, k, n, ms, args.passes.split(","), args.fused_max_m),
                 path, meta, t0, args.budget_s)
    print(table(rows))


if __name__ == "__main__":
    main()
