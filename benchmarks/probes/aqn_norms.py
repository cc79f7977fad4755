"""What float32 AQN norms cost (issue #20): bf16 norm weights vs float32 ones, same model, same process.

Rows, each timed both ways (bf16 norm weights = the baseline, float32 = what `keep_norms_float32` and the vLLM
backend's float32 RMSNorms run):
  norm     one RMSNorm call on (tokens x hidden) bf16 activations: HF's module (its own forward vs the float32
           forward) and the fast engine's `rms_norm` (one `F.rms_norm` vs casts around it), microseconds;
  decode   `HF` rollout tokens/s (fast engine: CUDA graphs on GPU, eager on CPU) on a random-init model;
  vllm     (--vllm) the `VLLM` backend's tokens/s with the engine built with bf16 vs float32 RMSNorm weights
           (two engines, one after the other; on the CPU build use a small --kv-gb).
Each decode/vllm row also records, per norm dtype, the tok/s without noise (`<dtype>_no_noise`) and the cost of
entering and leaving the noise context alone (`<dtype>_noise_enter_exit_ms`), which splits an AQN rollout's
extra time into the noise bookkeeping and the generation with noisy (float32) norms.
Random weights (speed does not depend on values). Prints a table with the card and date; --json writes it too.

    PYTHONPATH=. python benchmarks/probes/aqn_norms.py --model tiny --hidden 576 --layers 8 --batch 8 --new 64
    PYTHONPATH=. python benchmarks/probes/aqn_norms.py --model qwen2.5-7b --batch 8 --new 256 --vllm   # on the GPU
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))  # the repository root: qerl


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def policy(args, device: str):
    from qerl.lora.apply import apply_lora
    from qerl.models.random_init import RandomInit

    overrides = {k: v for k, v in (("hidden_size", args.hidden), ("num_hidden_layers", args.layers)) if v}
    if args.hidden:
        overrides.update(intermediate_size=args.hidden * 3, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=max(1, args.hidden // 192))
    model, tok = RandomInit(args.model, overrides=overrides, tokenizer="bytes").load(
        quantizer=args.quantizer, dtype="bfloat16", device=device)
    return apply_lora(model, rank=16, alpha=32.0), tok


def norm_rows(model, tokens: int, repeats: int) -> list[dict]:
    from qerl.noise.precision import keep_norms_float32
    from qerl.rollout.fast.blocks import rms_norm

    norm = next(m for n, m in model.named_modules() if n.endswith("layers.0.input_layernorm"))
    wide = copy.deepcopy(norm)
    keep_norms_float32(torch.nn.ModuleDict({"input_layernorm": wide}), "input_layernorm")
    x = torch.randn(tokens, norm.weight.numel(), dtype=torch.bfloat16, device=norm.weight.device)
    rows = []
    with torch.no_grad():
        for what, fn in (("HF module", lambda m: m(x)), ("fast engine", lambda m: rms_norm(m, x))):
            base, f32 = timed(lambda fn=fn: fn(norm), repeats), timed(lambda fn=fn: fn(wide), repeats)
            rows.append({"row": f"norm {what} {tokens}x{x.shape[1]}", "bf16": base * 1e6, "float32": f32 * 1e6,
                         "unit": "us"})
    return rows


def decode_row(model, tok, args, fast: bool) -> dict:
    from qerl.noise.precision import keep_norms_float32
    from qerl.rollout import HF
    from qerl.types import SamplingConfig

    ids = [[5 + (i * 7 + j) % 200 for j in range(args.prompt)] for i in range(args.batch)]
    cfg = SamplingConfig(n=1, temperature=1.0, max_new_tokens=args.new, seed=0)
    result = {}
    for label, m in (("bf16", model), ("float32", keep_norms_float32(wide := copy.deepcopy(model)) and wide)):
        hf = HF(fast=fast, max_batch_rows=args.batch)
        hf.setup(m, tok)
        hf.generate(ids, cfg)  # warm-up (graph capture on CUDA)
        with hf.noise(5e-4, seed=0):
            seconds = timed(lambda hf=hf: hf.generate(ids, cfg), args.repeats)
        result[label] = args.batch * args.new / seconds
        result.update(noise_breakdown(hf, ids, cfg, args, label))
        hf.release_memory()
    return {"row": f"decode HF fast={fast} b{args.batch} new{args.new}", **result, "unit": "tok/s"}


def fresh_generate(backend, ids, cfg):
    """`backend.generate` from an empty vLLM prefix cache (an RL step's prompts are new; a repeat of the same
    prompts would otherwise skip its prefill, which only the noisy calls - their noise resets the cache - pay)."""
    llm = getattr(backend, "llm", None)
    if llm is not None:
        llm.reset_prefix_cache()
    return backend.generate(ids, cfg)


def noise_breakdown(backend, ids, cfg, args, label: str) -> dict:
    """Where an AQN rollout's extra time goes (issue #18): tok/s of the same backend without noise, and the
    milliseconds of entering and leaving `backend.noise` (draw, copy into the engine, measure, restore, cache
    resets) with no generation inside."""
    def enter_exit():
        with backend.noise(5e-4, seed=0):
            pass

    plain = timed(lambda: fresh_generate(backend, ids, cfg), args.repeats)
    return {f"{label}_no_noise": args.batch * args.new / plain,
            f"{label}_noise_enter_exit_ms": timed(enter_exit, max(5, args.repeats)) * 1e3}


def vllm_row(model, tok, args) -> dict:
    from qerl.noise.precision import keep_norms_float32
    from qerl.rollout.vllm import VLLM
    from qerl.types import SamplingConfig

    ids = [[5 + (i * 7 + j) % 200 for j in range(args.prompt)] for i in range(args.batch)]
    cfg = SamplingConfig(n=1, temperature=1.0, max_new_tokens=args.new, seed=0)
    result = {}
    for label in args.vllm_norms:
        m = copy.deepcopy(model)
        if label == "float32":
            keep_norms_float32(m)  # the backend then builds its engine with float32 RMSNorm weights
        backend = VLLM(max_model_len=args.prompt + args.new + 8, kv_cache_memory_gb=args.kv_gb,
                       gpu_memory_utilization=0.3, max_num_seqs=args.batch, measure_mismatch=False,
                       compile=not args.vllm_no_compile)
        backend.setup(m, tok)
        backend.generate(ids, cfg)
        with backend.noise(5e-4, seed=0):
            seconds = timed(lambda b=backend: fresh_generate(b, ids, cfg), args.repeats)
            result[f"{label}_realized_sigma"] = backend.noise_metrics.get("noise/realized_sigma")
        result[label] = args.batch * args.new / seconds
        result.update(noise_breakdown(backend, ids, cfg, args, label))
        backend.close()
        del backend, m
        gc.collect()  # the first engine's memory, before the second one starts
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"row": f"vllm b{args.batch} new{args.new}", **result, "unit": "tok/s"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="RandomInit preset (tiny, qwen2.5-0.5b ... qwen2.5-32b)")
    p.add_argument("--hidden", type=int, default=0, help="override hidden size (heads = hidden/64)")
    p.add_argument("--layers", type=int, default=0, help="override the number of layers")
    p.add_argument("--quantizer", default=None, help="NVFP4, MXFP4, NF4 or none (dense bf16 base)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--norm-tokens", type=int, nargs="+", default=[8, 2048])
    p.add_argument("--vllm", action="store_true", help="also time the VLLM backend (two engine builds)")
    p.add_argument("--vllm-only", action="store_true", help="only the vLLM row (no HF decode rows)")
    p.add_argument("--vllm-norms", nargs="+", choices=("bf16", "float32"), default=["bf16", "float32"],
                   help="the vLLM engines to build (one per process avoids two engines profiling one card)")
    p.add_argument("--vllm-no-compile", action="store_true", help="VLLM(compile=False): full decode graphs only")
    p.add_argument("--kv-gb", type=float, default=None, help="vLLM kv_cache_memory_gb (CPU build: e.g. 0.5)")
    p.add_argument("--skip-slow", action="store_true", help="on CPU, skip the HF(fast=False) decode row")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = policy(args, device)
    card = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# AQN float32 norms vs bf16 norms - issue #20 - {card} - {datetime.date.today().isoformat()}")
    print(f"{'row':<44} {'bf16':>12} {'float32':>12} {'float32/bf16':>13}", flush=True)
    rows = []

    def show(r: dict) -> None:
        rows.append(r)
        bf16, fp32 = r.get("bf16", float("nan")), r.get("float32", float("nan"))  # --vllm-norms: maybe one
        print(f"{r['row']:<44} {bf16:>10.1f}{r['unit'][:2]:>2} {fp32:>10.1f}{r['unit'][:2]:>2} "
              f"{fp32 / bf16:>12.3f}x", flush=True)
        extra = {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()
                 if k not in ("row", "bf16", "float32", "unit")}
        if extra:
            print(f"{'':<44} {extra}", flush=True)
        if args.json:  # after every row: a run cut short by a time limit keeps the rows it finished
            with open(args.json, "w") as f:
                json.dump({"card": card, "date": datetime.date.today().isoformat(), "args": vars(args), "rows": rows},
                          f, indent=1)

    for t in args.norm_tokens:
        for r in norm_rows(model, t, max(20, args.repeats)):
            show(r)
    if not args.vllm_only:
        show(decode_row(model, tok, args, fast=True))
        if device == "cpu" and not args.skip_slow:
            show(decode_row(model, tok, args, fast=False))
    if args.vllm or args.vllm_only:
        show(vllm_row(model, tok, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
