"""What the 7B GSM8K-shape step ratio (NVFP4 over bf16 LoRA, issue #36's 1.5x) can reach, from committed files:
the step rows (`step.py --lengths gsm8k`, the drawn lengths) and the rollout profile (`rollout_profile.py`, the
decode step's milliseconds by kernel family at batch 8, 64, 128 and 256).

A generate of ragged lengths decodes max(length) steps; step t runs the rows still going. Each step's time is the
profile's average decode step (LoRA rows, linear between the profiled batches, the batch-8 time below 8), plus the
profile's prefill at the batch. The model is checked against the rows' measured `generate_s`; then the step ratio is
recomputed with the rows' training time (or `--train-s`, e.g. the length-grouped prediction) and with a
perfect FP4 decode GEMM (`profile_ceiling.py`'s: the weight-read floor or the compute time, whichever is larger),
the modelled NVFP4 generate scaled by measured / modelled so the model's own error does not count.

    python3 benchmarks/step_ceiling.py benchmarks/results/step-NVIDIA-H100-80GB-HBM3-2026-12-06-gsm8k-shape.json \\
        benchmarks/results/rollout-profile-NVIDIA-H100-80GB-HBM3-2026-12-06.json --train-s 24.5
"""
from __future__ import annotations

import argparse
import json
from itertools import pairwise

from profile_ceiling import gemm_ms, perfect_gemm_ms


def active_rows(lengths: list[int]) -> list[int]:
    """Rows still generating at each decode step of one generate."""
    return [sum(1 for n in lengths if n > t) for t in range(max(lengths))]


def interpolate(points: dict[int, float], batch: int) -> float:
    """`points` ({batch: ms}) at `batch`: linear between neighbours, the ends held flat."""
    keys = sorted(points)
    if batch <= keys[0]:
        return points[keys[0]]
    for lo, hi in pairwise(keys):
        if batch <= hi:
            return points[lo] + (points[hi] - points[lo]) * (batch - lo) / (hi - lo)
    return points[keys[-1]]


def step_ms(profile: dict, fmt: str, perfect: tuple[float, float, float] | None = None) -> dict[int, float]:
    """{batch: ms of one decode step} for the LoRA rows of `fmt`; `perfect` = (params, tflops, floor_ms): the
    GEMMs replaced by `profile_ceiling.perfect_gemm_ms`."""
    steps = profile["new"] - 1
    out = {}
    for r in profile["rows"]:
        if r["fmt"] != fmt or not r["lora"]:
            continue
        ms = (r["gen_ms"] - r["prefill_ms"]) / steps
        if perfect is not None:
            ms += perfect_gemm_ms(r, *perfect) - gemm_ms(r["decode_gpu_ms"])
        out[r["batch"]] = ms
    return out


def generate_s(profile: dict, fmt: str, lengths: list[int], perfect=None) -> float:
    """Modelled seconds of one generate of `lengths` (prefill at the whole batch, then the ragged decode)."""
    prefill = {r["batch"]: r["prefill_ms"] for r in profile["rows"] if r["fmt"] == fmt and r["lora"]}
    per_step = step_ms(profile, fmt, perfect)
    rows = active_rows(lengths)
    return (interpolate(prefill, len(lengths)) + sum(interpolate(per_step, a) for a in rows[1:])) / 1e3


def ceiling(rows: list[dict], profile: dict, train_s: float | None, params: float, tflops: float,
            floor_ms: float) -> dict:
    by_fmt = {r["format"]: r for r in rows}
    nv, bf = by_fmt["nvfp4"], by_fmt["bf16"]
    lengths = nv["lengths_drawn"]
    rest = {f: r["step_s"] - r["generate_s"] - r["train_s"] for f, r in by_fmt.items()}  # sync, wake, sleep
    train = {f: (train_s if train_s is not None else r["train_s"]) for f, r in by_fmt.items()}
    model = {f: generate_s(profile, f, lengths) for f in by_fmt}
    ideal = generate_s(profile, "nvfp4", lengths, (params, tflops, floor_ms))
    bf_step = bf["generate_s"] + train["bf16"] + rest["bf16"]
    rows_at = active_rows(lengths)
    out = {"decode_steps": len(rows_at), "steps_at_8_rows_or_fewer": sum(1 for a in rows_at if a <= 8),
           "generate_measured_s": {f: r["generate_s"] for f, r in by_fmt.items()},
           "generate_model_s": {f: round(s, 2) for f, s in model.items()},
           "train_s": train, "rest_s": {f: round(s, 2) for f, s in rest.items()},
           "ratio_measured": round(bf["step_s"] / nv["step_s"], 3),
           "ratio_at_train_s": round(bf_step / (nv["generate_s"] + train["nvfp4"] + rest["nvfp4"]), 3),
           "nvfp4_generate_perfect_gemm_s": round(ideal, 2),
           "ratio_perfect_gemm": round(bf_step / (ideal * nv["generate_s"] / model["nvfp4"] + train["nvfp4"]
                                                  + rest["nvfp4"]), 3)}
    out["nvfp4_generate_for_1_5x_s"] = round(bf_step / 1.5 - train["nvfp4"] - rest["nvfp4"], 2)
    # training is the same seconds in both steps, so a faster update raises the ratio towards the rollouts' own:
    # (bf_rollout + T) / (nv_rollout + T) = 1.5 at T = 2 * (bf_rollout - 1.5 * nv_rollout); None if no T reaches it
    bf_roll, nv_roll = bf["generate_s"] + rest["bf16"], nv["generate_s"] + rest["nvfp4"]
    need = 2.0 * (bf_roll - 1.5 * nv_roll)
    out["rollout_ratio"] = round(bf_roll / nv_roll, 3)
    out["train_for_1_5x_s"] = round(need, 2) if need > 0 else None
    return out


def load(step_path: str, profile_path: str) -> tuple[list[dict], dict]:
    """The step rows and the profile, or a one-line exit naming the file and what it lacks."""
    with open(step_path) as f:
        rows = json.load(f).get("rows", [])
    fmts = {r.get("format"): r for r in rows}
    if not {"nvfp4", "bf16"} <= fmts.keys() or not all(fmts[f].get("lengths_drawn") for f in ("nvfp4", "bf16")):
        raise SystemExit(f"{step_path}: needs an nvfp4 and a bf16 row with `lengths_drawn` (step.py --rollout vllm "
                         f"--lengths gsm8k|dapo); found formats {sorted(map(str, fmts))}")
    with open(profile_path) as f:
        profile = json.load(f)
    if not {"nvfp4", "bf16"} <= {r["fmt"] for r in profile.get("rows", []) if r.get("lora")}:
        raise SystemExit(f"{profile_path}: needs LoRA rows of both nvfp4 and bf16 (benchmarks/rollout_profile.py)")
    return rows, profile


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step_rows", help="a step-*.json with an nvfp4 and a bf16 row of the same drawn lengths")
    p.add_argument("profile", help="a rollout-profile-*.json (LoRA rows)")
    p.add_argument("--train-s", type=float, default=None, help="training seconds for both rows (default: measured)")
    p.add_argument("--params", type=float, default=6.5e9, help="linear-layer parameters (Qwen2.5-7B: ~6.5e9)")
    p.add_argument("--tflops", type=float, default=770.0, help="the best bf16 GEMM rate measured (cuBLAS prefill)")
    p.add_argument("--floor-ms", type=float, default=1.6, help="reading the FP4 weights once (7B on an H100)")
    args = p.parse_args()
    rows, profile = load(args.step_rows, args.profile)
    print(json.dumps(ceiling(rows, profile, args.train_s, args.params, args.tflops, args.floor_ms), indent=1))


if __name__ == "__main__":
    main()
