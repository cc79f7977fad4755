"""What the `VLLM` backend's export to /dev/shm costs: `export_quantized` of a random 7B-shaped NVFP4 base.

The engine is built from a folder the backend writes (compressed-tensors safetensors, config, tokenizer) and
reads back; this times the write, twice (the first pays tmpfs page allocation), for `--layers` decoder layers
plus the two 152k x 3,584 embeddings (most of the bytes at 2 layers).

    PYTHONPATH=. python benchmarks/probes/export_cost.py --layers 2          # CPU: ~40 s, mostly building the model
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # benchmarks/: result_file
from result_file import write_result


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="qwen2.5-7b")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "results"))
    args = p.parse_args()
    from qerl.models.random_init import RandomInit
    from qerl.rollout.vllm import engine

    device = "cuda" if torch.cuda.is_available() else "cpu"
    loader = RandomInit(args.preset, overrides={"num_hidden_layers": args.layers}, tokenizer="smollm2")
    model, tok = loader.load(quantizer="NVFP4", dtype="bfloat16", device=device)
    runs = []
    for _ in range(2):
        folder = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        t0 = time.perf_counter()
        engine.export_quantized(model, tok, folder)
        runs.append({"seconds": round(time.perf_counter() - t0, 3), "gib": round(folder_bytes(folder) / 2**30, 3)})
        shutil.rmtree(folder)
    row = write_result(args.out, "export-cost", {"args": vars(args), "runs": runs,
                                                 "gib_per_s": [round(r["gib"] / r["seconds"], 2) for r in runs]})
    print(f"# export to /dev/shm - {row['card']} - {row['date']}")
    for r, rate in zip(runs, row["gib_per_s"]):
        print(f"{args.preset} with {args.layers} layers: {r['gib']:.2f} GiB in {r['seconds']:.2f} s ({rate} GiB/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
