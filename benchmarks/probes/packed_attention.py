"""One 7B-shaped attention layer, forward + backward, for a packed group: segment by segment vs the dense block mask.

Qwen2.5-7B's attention (28 query heads, 4 key/value heads, head_dim 128, bf16), prompt 256, a group of 8 completions
of the given lengths packed as in `qerl.models.packed`: `segments` is `qerl.models.segment_attention` (the prompt
causally, each completion against [prompt | itself], lower-right causal bias), `batched` the same with every
completion in one call (rows padded to the longest completion, `PackedGroups(batched=True)`), `mask` is SDPA with the
dense additive block mask (`block_mask`), `padded` (with `--padded`) the 8 rows each padded to prompt + the longest completion under a
causal boolean mask, as the row layout runs them. Times are CUDA-event means over `--reps` after one warm-up; only
attention runs, so what a layer's GEMMs would hide of the segments' launch overhead is not seen here.

    python benchmarks/probes/packed_attention.py --groups 250x8 490x8 700x8 1000x8 2000x8 \\
        4096,450,500,300,700,350,420,380 --padded --out $OUT

Needs a CUDA device. Writes `packed-attention-<card>-<date>.json` into `--out` (default benchmarks/results/).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), os.path.join(HERE, "..")]  # the repository (qerl), benchmarks/
from result_file import write_result

from qerl.models.packed import block_mask
from qerl.models.segment_attention import segment_attention

HEADS, KV_HEADS, HEAD_DIM, PROMPT = 28, 4, 128, 256


def lengths_of(text: str) -> list[int]:
    """`490x8` -> eight 490s; `4096,450` -> those lengths."""
    if "x" in text:
        n, k = text.split("x")
        return [int(n)] * int(k)
    return [int(x) for x in text.split(",")]


def mean_ms(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def states(batch: int, length: int, heads: int) -> torch.Tensor:
    return torch.randn(batch, heads, length, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)


def measure(lengths: list[int], reps: int, padded: bool) -> dict:
    total, groups, scale = PROMPT + sum(lengths), HEADS // KV_HEADS, HEAD_DIM ** -0.5
    q, k, v = states(1, total, HEADS), states(1, total, KV_HEADS), states(1, total, KV_HEADS)
    mask = block_mask(PROMPT, lengths, "cuda", torch.bfloat16)

    def segments():
        segment_attention(None, q, k, v, None, scaling=scale, packed_segments=(PROMPT, tuple(lengths)))[0].sum().backward()

    def batched():
        segment_attention(None, q, k, v, None, scaling=scale,
                          packed_segments=(PROMPT, tuple(lengths), True))[0].sum().backward()

    def dense():
        F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1),
                                       attn_mask=mask, scale=scale).sum().backward()

    row = {"lengths": lengths, "packed_positions": total, "segments_ms": round(mean_ms(segments, reps), 3),
           "batched_ms": round(mean_ms(batched, reps), 3), "mask_ms": round(mean_ms(dense, reps), 3)}
    if padded:
        width = PROMPT + max(lengths)
        qp, kp, vp = states(len(lengths), width, HEADS), states(len(lengths), width, KV_HEADS), states(
            len(lengths), width, KV_HEADS)
        causal = torch.ones(len(lengths), 1, width, width, device="cuda", dtype=torch.bool).tril()

        def rows():
            F.scaled_dot_product_attention(qp, kp.repeat_interleave(groups, 1), vp.repeat_interleave(groups, 1),
                                           attn_mask=causal, scale=scale).sum().backward()

        row.update(padded_positions=len(lengths) * width, padded_ms=round(mean_ms(rows, reps), 3))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", nargs="+", default=["250x8", "490x8", "700x8", "1000x8", "2000x8"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--padded", action="store_true", help="also time the 8 rows padded (the row layout)")
    p.add_argument("--out", default=os.path.join(HERE, "..", "results"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error("needs a CUDA device (it times CUDA kernels)")
    rows = []
    for text in args.groups:
        rows.append(measure(lengths_of(text), args.reps, args.padded))
        print(json.dumps(rows[-1]), flush=True)
    write_result(args.out, "packed-attention", {"torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
