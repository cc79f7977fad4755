"""Where does the 7B engine-vs-policy mismatch come from? One process, one policy per depth, one engine per mode.

`qerl fit` on a random-weight Qwen2.5-7B NVFP4 with vLLM rollouts logged `rollout/mismatch_kl` ~0.70 nats/token
(with and without AQN, H200, 2026-12-02) where SmolLM2 served dense gives 0.002 and the tiny 2-layer packed GPU
test 1.4e-4. `benchmarks/probes/mismatch_depth.py` ruled out random-weight chaos (a bf16-vs-float32 forward of the same
random 28-layer 7B differs by KL 0.0026). This probe bisects the rest on the GPU, each cell one fresh engine:

  layers   the preset's depth vs `--layers` overrides (e.g. 2 and 28): does the gap grow with depth?
  served   `packed` (compressed-tensors NVFP4, vLLM's Marlin FP4 GEMM) vs `dense` (`quantized_base: false`: the
           same dequantized weights in bf16): is it the FP4 path?
  graphs   `packed` / `dense` capture full decode CUDA graphs as the fit did (`compile: false`); `packed-eager`
           and `dense-eager` run without graphs, as the tiny GPU tests do (1.4e-4 there)
  sleep    `packed-sleep` / `dense-sleep`: the engine syncs the adapter, sleeps and wakes before generating, as in
           `qerl fit` with `enable_sleep_mode` before every rollout after the first update (the 0.70 fit ran sleep
           mode and logged a 3-step mean; no other cell sleeps)
  tokens   the prompts are token ids below `--max-id`; `--tokenizer bytes --max-id 259` vs the SmolLM2 tokenizer
           checks the vocabulary; `--ragged` gives the prompts different lengths (left padding, as in a GSM8K batch).

Each cell generates `--rows` completions of `--new` tokens (temperature 1, EOS ignored) from `--prompts` random
prompts of `--prompt` tokens, with `measure_mismatch` on, and records `rollout/mismatch_kl`,
`rollout/mismatch_logprob_absdiff`, the engine's served-as, and the log-prob gap of one fixed continuation
scored by both sides (`VLLM.score` against the policy's forward; in `dense` cells also a plain transformers model
holding the dequantized base, which puts a gap on the policy's side or the engine's), the mean log-prob of the sampled tokens on each
side, and the share of sampled ids beyond the tokenizer's (the 7B has 152,064 ids, the SmolLM2 tokenizer 49,152:
0 there would mean vLLM samples only tokenizer ids while the policy normalizes over all). LoRA r32 with B = 0.

    PYTHONPATH=. python benchmarks/probes/mismatch_probe.py --preset qwen2.5-7b --ragged \
        --cells 28:packed 28:packed-eager 28:dense 2:packed --out $OUT/mismatch-probe.json     # H200: ~6 min
    PYTHONPATH=. python benchmarks/probes/mismatch_probe.py --preset qwen2.5-7b --layers 2 28 --served packed dense \
        --out $OUT/mismatch-probe.json                                     # H200: ~4 engines x ~50 s
    PYTHONPATH=. python benchmarks/probes/mismatch_probe.py --preset qwen2.5-0.5b --layers 2 --served dense --new 8  # CPU smoke

Each cell runs in its own process (one vLLM engine per process); a failed cell is recorded with its error.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))  # the repository root: qerl


#: engine kinds of a cell: how the base is served, and '-eager' for no CUDA graphs
SERVED = ("packed", "dense", "packed-eager", "dense-eager", "packed-sleep", "dense-sleep")


def build_policy(preset: str, layers: int | None, device: str, tokenizer: str = "auto"):
    from qerl.lora.apply import apply_lora
    from qerl.models.random_init import RandomInit

    overrides = {"num_hidden_layers": layers} if layers else {}
    model, tok = RandomInit(preset, overrides=overrides, tokenizer=tokenizer).load(
        quantizer="NVFP4", dtype="bfloat16", device=device)
    return apply_lora(model, rank=32, alpha=64.0), tok


def engine(policy, tok, served: str, args):
    from qerl.rollout.vllm import VLLM

    class NoEos(VLLM):
        def sampling_params(self, sampling, prompt_index):
            params = super().sampling_params(sampling, prompt_index)
            params.ignore_eos = True
            return params

    on_cuda = torch.cuda.is_available()
    base, _, mode = served.partition("-")
    backend = NoEos(max_model_len=args.prompt + args.new + 8, max_num_seqs=args.rows, compile=False,
                    quantized_base=base == "packed", enforce_eager=mode == "eager", enable_sleep_mode=mode == "sleep",
                    gpu_memory_utilization=0.2 if on_cuda else 0.3,
                    kv_cache_memory_gb=2.0 if on_cuda else 0.25)  # a fixed cache: no memory profiling
    t0 = time.perf_counter()
    backend.setup(policy, tok)
    return backend, time.perf_counter() - t0


def fixed_gaps(backend, policy, args, reference: bool) -> dict:
    """Mean |log p_engine - log p_policy| of one fixed random continuation after one fixed prompt; with
    `reference`, also |log p_reference - log p_policy| for a plain transformers model holding the policy's
    dequantized base in bf16 (no qerl kernels, no vLLM): a gap there puts the fault on the policy's side."""
    from qerl.models.logprobs import causal_lm, completion_logprobs

    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, args.max_id, (args.prompt,), generator=gen).tolist()
    cont = torch.randint(3, args.max_id, (args.new,), generator=gen).tolist()
    device = next(policy.parameters()).device
    p, c = torch.tensor([prompt], device=device), torch.tensor([cont], device=device)

    def logprobs(model) -> torch.Tensor:
        with torch.no_grad():
            return completion_logprobs(model.eval(), p, torch.ones_like(p), c, torch.ones_like(c)).logprobs[0].float().cpu()

    mine = logprobs(policy)
    out = {"fixed_continuation_absdiff": round(float((backend.score(prompt, cont) - mine).abs().mean()), 6)}
    if reference:
        from transformers import AutoModelForCausalLM

        from qerl.rollout.vllm.engine import dense_base_state_dict

        lm = causal_lm(policy)
        ref = AutoModelForCausalLM.from_config(lm.config, torch_dtype=torch.bfloat16)
        missing, _ = ref.load_state_dict(dense_base_state_dict(lm, torch.bfloat16), strict=False)
        out["reference_missing"] = [k for k in missing if "rotary" not in k][:5]
        out["reference_vs_policy_absdiff"] = round(float((logprobs(ref.to(device)) - mine).abs().mean()), 6)
        del ref
    return out


def cell(policy, tok, served: str, args) -> dict:
    from qerl.types import SamplingConfig

    backend, setup_s = engine(policy, tok, served, args)
    if served.endswith("-sleep"):  # as in `qerl fit` after an update: adapter synced, engine slept, woken
        backend.sync_weights(policy)
        backend.release_memory()
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, args.max_id, (args.prompts, args.prompt), generator=gen).tolist()
    if args.ragged:  # prompts of different lengths: the policy scores them left-padded, as a GSM8K batch
        prompts = [p[: max(4, args.prompt - i * args.prompt // (2 * args.prompts))] for i, p in enumerate(prompts)]
    group = max(1, args.rows // args.prompts)
    rollout = backend.generate(prompts, SamplingConfig(n=group, temperature=1.0, max_new_tokens=args.new, seed=0))
    from qerl.models.mismatch import policy_logprobs

    mask = rollout.completion_mask.bool()
    sampled = rollout.completion_ids[mask]
    out = {"served": served, "served_as": backend.served_as, "setup_s": round(setup_s, 1),
           "linear_methods": backend.engine_linear_methods(), "tokens": int(mask.sum()),
           **{k: round(v, 6) for k, v in backend.last_metrics.items()},
           "engine_logprob_mean": round(float(rollout.logprobs[mask].mean()), 4),
           "policy_logprob_mean": round(float(policy_logprobs(policy, rollout, 1.0)[mask].mean()), 4),
           # 0 here with a vocabulary far above the tokenizer's would mean vLLM samples only tokenizer ids
           "vocab": int(policy.get_base_model().config.vocab_size), "tokenizer_ids": len(tok),
           "sampled_beyond_tokenizer_frac": round(float((sampled >= len(tok)).float().mean()), 4),
           **fixed_gaps(backend, policy, args, reference=served.startswith("dense"))}
    backend.close()
    return out


def run_cell(layers: int, served: str, args) -> dict:
    """One cell in this process (`--cell`): build the policy, the engine, measure."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy, tok = build_policy(args.preset, layers or None, device, args.tokenizer)
    depth = policy.get_base_model().config.num_hidden_layers
    return {"preset": args.preset, "layers": depth, **cell(policy, tok, served, args)}


def spawn(layers: int, served: str, argv: list[str]) -> dict:
    """One cell in a child process (one vLLM engine per process); its failure is a result, not the end."""
    done = subprocess.run([sys.executable, __file__, *argv, "--cell", str(layers), served], capture_output=True,
                          text=True, check=False)
    found = [line[5:] for line in done.stdout.splitlines() if line.startswith("CELL ")]
    if found:
        return json.loads(found[-1])
    return {"layers": layers, "served": served, "error": (done.stderr or done.stdout)[-600:]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="qwen2.5-7b", help="RandomInit preset")
    p.add_argument("--layers", type=int, nargs="+", default=[0], help="depths to try (0: the preset's)")
    p.add_argument("--served", nargs="+", choices=SERVED, default=["packed", "dense"],
                   help="engine kinds; '-eager': no CUDA graphs (the default, like `compile: false`, captures full "
                        "decode graphs)")
    p.add_argument("--cells", nargs="+", default=None, metavar="LAYERS:SERVED",
                   help="explicit cells instead of --layers x --served, e.g. 28:packed 28:packed-eager 2:packed")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--rows", type=int, default=16, help="completions in all (prompts x group)")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--max-id", type=int, default=40000, help="prompt and continuation ids are below this")
    p.add_argument("--ragged", action="store_true", help="prompts of different lengths (left padding on the policy side)")
    p.add_argument("--tokenizer", default="auto", choices=("auto", "bytes", "smollm2"),
                   help="RandomInit tokenizer (auto: smollm2 for big vocabularies; bytes needs --max-id <= 259)")
    p.add_argument("--out", default=None, help="write the cells as JSON here")
    p.add_argument("--cell", nargs=2, metavar=("LAYERS", "SERVED"), default=None, help=argparse.SUPPRESS)
    args, argv = p.parse_args(), [a for a in sys.argv[1:]]
    if args.cell:
        print("CELL " + json.dumps(run_cell(int(args.cell[0]), args.cell[1], args)), flush=True)
        return 0
    cells = []
    plan = [(int(c.split(":")[0]), c.split(":")[1]) for c in args.cells] if args.cells else \
        [(layers, served) for layers in args.layers for served in args.served]
    for layers, served in plan:
        if served not in SERVED:
            raise SystemExit(f"--cells: {served!r} is not one of {SERVED}")
        cells.append(spawn(layers, served, argv))
        print(json.dumps(cells[-1]), flush=True)
    if args.out:
        card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        with open(args.out, "w") as f:
            json.dump({"card": card, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
                       "args": vars(args), "cells": cells}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
