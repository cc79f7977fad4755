"""The NVFP4/bf16 rollout ratio a better FP4 GEMM alone could reach, from a committed `rollout_profile.py` JSON
(docs/vllm.md, "How far a better FP4 GEMM alone could go").

Per batch: the average decode step of the whole generate ((generate - prefill) / (new - 1)) split into its GEMMs
and the rest (shared by both bases); then the ratio with the prefill's GEMMs at cuBLAS speed (the bf16 row's) and
with a perfect FP4 decode GEMM (the larger of the weight-read floor and the compute time at `--tflops`).

    python3 benchmarks/profile_ceiling.py benchmarks/results/rollout-profile-NVIDIA-H100-80GB-HBM3-2026-12-06.json
"""
from __future__ import annotations

import argparse
import json


def gemm_ms(split: dict) -> float:
    return split.get("fp4 gemm", 0.0) + split.get("bf16 gemm", 0.0)


def parts(row: dict, steps: int) -> tuple[float, float, float]:
    """(prefill ms other than GEMMs, average decode step ms, decode GEMM ms) of one LoRA row."""
    step = (row["gen_ms"] - row["prefill_ms"]) / steps
    return row["prefill_ms"] - gemm_ms(row["prefill_gpu_ms"]), step, gemm_ms(row["decode_gpu_ms"])


def perfect_gemm_ms(row: dict, params: float, tflops: float, floor_ms: float) -> float:
    """A decode step's GEMMs with the FP4 ones ideal: the larger of the weight-read floor and the compute time at
    `tflops`, plus the row's bf16 GEMMs (the head), which stay as profiled."""
    return max(floor_ms, 2 * row["batch"] * params / tflops / 1e9) + row["decode_gpu_ms"].get("bf16 gemm", 0.0)


def ceiling(profile: dict, params: float, tflops: float, floor_ms: float) -> list[dict]:
    rows = {(r["fmt"], r["batch"]): r for r in profile["rows"] if r["lora"]}
    steps = profile["new"] - 1
    out = []
    for batch in sorted({b for f, b in rows if f == "nvfp4" and ("bf16", b) in rows}):
        nv, bf = rows[("nvfp4", batch)], rows[("bf16", batch)]
        nv_pre, nv_step, nv_gemm = parts(nv, steps)
        bf_prefill_gemm = gemm_ms(bf["prefill_gpu_ms"])
        perfect = perfect_gemm_ms(nv, params, tflops, floor_ms)
        shared = nv_step - nv_gemm
        bf_step = (bf["gen_ms"] - bf["prefill_ms"]) / steps
        out.append({"batch": batch, "today": bf["gen_ms"] / nv["gen_ms"],
                    "prefill_fix": bf["gen_ms"] / (nv_pre + bf_prefill_gemm + steps * nv_step),
                    "perfect_gemm": bf["gen_ms"] / (nv_pre + bf_prefill_gemm + steps * (shared + perfect)),
                    "decode_only_perfect": bf_step / (shared + perfect), "shared_ms": shared, "perfect_ms": perfect})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile")
    p.add_argument("--params", type=float, default=6.5e9, help="linear-layer parameters (Qwen2.5-7B: ~6.5e9)")
    p.add_argument("--tflops", type=float, default=770.0, help="the best bf16 GEMM rate measured (cuBLAS prefill)")
    p.add_argument("--floor-ms", type=float, default=1.6, help="reading the FP4 weights once (7B on an H100)")
    args = p.parse_args()
    with open(args.profile) as f:
        profile = json.load(f)
    print(f"{profile['card']} {profile['date']}: batch | today | prefill at cuBLAS | + perfect FP4 GEMM | decode only")
    for r in ceiling(profile, args.params, args.tflops, args.floor_ms):
        print(f"{r['batch']:>5} | {r['today']:.2f}x | {r['prefill_fix']:.2f}x | {r['perfect_gemm']:.2f}x | "
              f"{r['decode_only_perfect']:.2f}x  (shared {r['shared_ms']:.2f} ms, perfect GEMM {r['perfect_ms']:.2f})")


if __name__ == "__main__":
    main()
