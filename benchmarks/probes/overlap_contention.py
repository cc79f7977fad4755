"""Why training during the rollout gained nothing (H200, 2026-12-07): what slows a small-batch decode that shares the GPU.

`--train-during-rollout` at the 7B GSM8K shape hid 8.6 s of update under the generate and slowed the generate by
8.4 s: the two time-sliced. Two causes fit that: the GIL (the update's Python holds it while the engine's loop
waits, so the GPU idles between decode steps) or the SMs (the update's GEMM blocks occupy every SM and each of the
decode step's ~400 small kernels waits for one). This probe tells them apart. A 7B NVFP4 engine (qerl's `VLLM`,
`compile: false`, awake) decodes `--rows` x `--new` tokens (EOS ignored) alone, then with one background load at a
time on a worker thread:

- `python`: pure Python, no GPU (the GIL alone);
- `matmul`: 8192^3 bf16 matmuls on a side stream, a sync every 8 (the SMs alone, almost no Python);
- `matmul-half`: the same confined to half of the SMs (a CUDA green context, `qerl.training.gpu_sharing.side_stream`);
- `train`, `train-half`: the real update - a packed group of 8 completions of `--group-new` tokens, forward and
  backward of the 7B policy with checkpointing, as `GroupTrainer` runs it - on every SM / half of them;
- `matmul-prio`, `train-prio`: `matmul` / `train` with the decode on a stream of the highest priority
  (`qerl.training.gpu_sharing.engine_first`, what a stream does since 2026-12-07; the other cells decode on the default
  stream); `matmul-prio-half`, `train-prio-half`: both (what `--train-sm-share 0.5` runs).

Before the loads, one decode alone counts the device-wide synchronisations the engine's loop makes
(`torch.cuda.synchronize` / `torch.accelerator.synchronize` called from Python): each one would wait for the
update's queued kernels too, and a count near the decode's steps would explain time-slicing by itself.

For each: decode ms per step, the load's work per second during the decode and alone. `gain` = load share done +
decode share kept - 1: 0 is pure time-slicing (what the step row showed), > 0 real overlap. `python` and `train`
run once per `--gil-turns` value (`sys.setswitchinterval`; Python's default is 5 ms, qerl's stream uses
`qerl.training.gpu_sharing.GIL_TURN_S`, 0.5 ms), the other loads at 0.5 ms.

    python benchmarks/probes/overlap_contention.py --out $OUT

Needs a CUDA device and vLLM. Writes `overlap-contention-<card>-<date>.json` into `--out` (default benchmarks/results/).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), os.path.join(HERE, "..")]  # the repository (qerl), benchmarks/
from result_file import write_result

LOADS = ["none", "python", "matmul", "matmul-half", "matmul-prio", "matmul-prio-half", "train", "train-half",
         "train-prio", "train-prio-half"]


def python_load(stop: threading.Event, done: list) -> None:
    while not stop.is_set():
        sum(range(2000))
        done[0] += 1


def matmul_load(stop: threading.Event, done: list, stream: torch.cuda.Stream) -> None:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    with torch.cuda.stream(stream):
        while not stop.is_set():
            for _ in range(8):
                a @ b
            stream.synchronize()
            done[0] += 8 * 2 * 8192**3 / 1e12  # TFLOP


def train_load(stop: threading.Event, done: list, stream: torch.cuda.Stream, step) -> None:
    with torch.cuda.stream(stream):
        while not stop.is_set():
            step()
            stream.synchronize()
            done[0] += 1


def count_device_syncs(decode) -> int:
    """Device-wide synchronisations called from Python while `decode()` runs."""
    count = [0]
    patched = [(torch.cuda, "synchronize")]
    if hasattr(torch, "accelerator") and hasattr(torch.accelerator, "synchronize"):
        patched.append((torch.accelerator, "synchronize"))
    originals = [getattr(owner, name) for owner, name in patched]

    def counting(original):
        def wrapper(*args, **kwargs):
            count[0] += 1
            return original(*args, **kwargs)
        return wrapper

    for (owner, name), original in zip(patched, originals):
        setattr(owner, name, counting(original))
    try:
        decode(count_end=False)
    finally:
        for (owner, name), original in zip(patched, originals):
            setattr(owner, name, original)
    return count[0]


def run_load(name: str, work, seconds: float | None, decode=None) -> dict:
    """Run load `name` (`work(stop, done)`) alone for `seconds`, or while `decode()` runs; its work per second."""
    stop, done = threading.Event(), [0.0]
    thread = threading.Thread(target=work, args=(stop, done), daemon=True)
    start = time.perf_counter()
    thread.start()
    decoded = None
    if decode is None:
        time.sleep(seconds)
    else:
        decoded = decode()
    stop.set()
    thread.join()
    elapsed = time.perf_counter() - start
    return {"load_per_s": done[0] / elapsed, "decode_s": decoded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=8, help="sequences the engine decodes at once (the tail: 8)")
    parser.add_argument("--new", type=int, default=1024, help="tokens each sequence decodes")
    parser.add_argument("--group-new", type=int, default=450, help="completion length of the training load's group")
    parser.add_argument("--loads", nargs="+", default=LOADS, choices=LOADS)
    parser.add_argument("--alone-s", type=float, default=8.0, help="seconds each load runs alone for its rate")
    parser.add_argument("--gil-turns", nargs="+", type=float, default=[0.005, 0.0005, 0.00005],
                        help="sys.setswitchinterval values the GIL-holding loads run under")
    parser.add_argument("--out", default=os.path.join(HERE, "..", "results"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("overlap_contention.py needs a CUDA device")
    import step as bench

    from qerl.algorithms import GRPO
    from qerl.models.packed import PackedGroups
    from qerl.rollout.vllm import VLLM
    from qerl.training.gpu_sharing import engine_first, side_stream
    from qerl.training.update import TrainBatch, accumulate_gradients
    from qerl.types import SamplingConfig

    class NoEos(VLLM):
        def sampling_params(self, sampling, prompt_index):
            params = super().sampling_params(sampling, prompt_index)
            params.ignore_eos = True
            return params

    policy, tok, _, _ = bench.build("7b", "nvfp4", "cuda", checkpointing=True)
    backend = NoEos(gpu_memory_utilization=0.3, max_model_len=256 + max(args.new, args.group_new) + 16,
                    max_num_seqs=max(16, args.rows), compile=False, measure_mismatch=False)
    backend.setup(policy, tok)
    prompts = [torch.randint(3, 30000, (256,)).tolist() for _ in range(args.rows)]
    sampling = SamplingConfig(n=1, temperature=1.0, top_p=1.0, max_new_tokens=args.new, seed=0)

    def decode(urgent: bool = False, count_end: bool = True) -> float:
        start = time.perf_counter()
        if urgent:
            with engine_first(torch.device("cuda")):
                backend.generate(prompts, sampling)
        else:
            backend.generate(prompts, sampling)
        if count_end:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    group_cfg = SamplingConfig(n=8, temperature=1.0, top_p=1.0, max_new_tokens=args.group_new)
    group = bench.synthetic_rollout([list(range(3, 259))], group_cfg, policy)
    algorithm, layout = GRPO(), PackedGroups()
    batch = TrainBatch(group, torch.randn(8, device="cuda"))

    def train_step() -> None:
        accumulate_gradients(policy, algorithm, batch, 8, 1.0, lambda loss: loss.backward(), totals=(1, 1.0),
                             layout=layout)

    decode()  # warm-up: graphs, Triton compiles
    train_step()
    sides = {share: side_stream(torch.device("cuda"), share) for share in (1.0, 0.5)}  # (stream, green context)
    streams = {share: stream for share, (stream, _) in sides.items()}
    works = {
        "python": python_load,
        "matmul": lambda stop, done: matmul_load(stop, done, streams[1.0]),
        "matmul-half": lambda stop, done: matmul_load(stop, done, streams[0.5]),
        "train": lambda stop, done: train_load(stop, done, streams[1.0], train_step),
        "train-half": lambda stop, done: train_load(stop, done, streams[0.5], train_step),
    }
    works["matmul-prio"], works["train-prio"] = works["matmul"], works["train"]
    works["matmul-prio-half"], works["train-prio-half"] = works["matmul-half"], works["train-half"]
    syncs = count_device_syncs(decode)
    print({"device_syncs_in_one_decode": syncs, "decode_steps": args.new}, flush=True)
    alone_decode = decode()
    cells = [{"load": "none", "decode_s": round(alone_decode, 3),
              "decode_ms_per_step": round(1e3 * alone_decode / args.new, 3)}]
    for name in args.loads:
        if name == "none":
            continue
        for turn in (args.gil_turns if name in ("python", "train") else [0.0005]):
            before = sys.getswitchinterval()
            sys.setswitchinterval(turn)
            try:
                alone = run_load(name, works[name], args.alone_s)["load_per_s"]
                during = run_load(name, works[name], None, lambda name=name: decode("-prio" in name))
            finally:
                sys.setswitchinterval(before)
            kept, share = alone_decode / during["decode_s"], during["load_per_s"] / max(alone, 1e-12)
            cells.append({"load": name, "gil_turn_s": turn, "decode_s": round(during["decode_s"], 3),
                          "decode_ms_per_step": round(1e3 * during["decode_s"] / args.new, 3),
                          "decode_kept": round(kept, 3), "load_alone_per_s": round(alone, 4),
                          "load_during_per_s": round(during["load_per_s"], 4), "load_share": round(share, 3),
                          "gain": round(kept + share - 1, 3)})
            print(cells[-1], flush=True)
    backend.close()
    write_result(args.out, "overlap-contention", {"rows": args.rows, "new": args.new, "group_new": args.group_new,
                                                  "green_half_sms": sides[0.5][1] is not None,
                                                  "device_syncs_in_one_decode": syncs, "cells": cells})


if __name__ == "__main__":
    main()
