"""`qerl quantize`: quantize a model to a 4-bit format, write the checkpoint, print sizes and per-layer error.

    qerl quantize --model smollm2 --quantizer NVFP4 --output out/smollm2-nvfp4
    qerl quantize --model path/to/hf-folder --quantizer NF4 --output out/nf4
    qerl quantize --model qwen2.5-7b --set num_hidden_layers=2 --quantizer NVFP4 --output out/q7 \
        --format compressed-tensors
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from qerl.models.random_init import PRESETS

FORMATS = ("qerl", "compressed-tensors")


def model_loader(spec: str, seed: int = 0, overrides: dict | None = None):
    """A PolicyLoader for `--model`: "smollm2", a .gguf file, a folder (HF or GGUF), or a RandomInit preset."""
    from qerl.models import GGUFModel, HFModel, RandomInit
    from qerl.models.random_init import _ALIASES

    name = spec.removeprefix("random:")
    if name.lower() in PRESETS or name.lower() in _ALIASES:
        return RandomInit(name, overrides=overrides, seed=seed)
    if overrides:
        raise ValueError("--set only applies to random-init presets (" + ", ".join(PRESETS) + ").")
    if spec.lower() == "smollm2":
        return GGUFModel()
    if os.path.isfile(spec) and spec.endswith(".gguf"):
        return GGUFModel(spec)
    if os.path.isdir(spec):
        if os.path.isfile(os.path.join(spec, "config.json")):
            return HFModel(spec)
        if any(f.endswith(".gguf") for f in os.listdir(spec)):
            return GGUFModel(spec)
        raise ValueError(f"--model {spec}: the folder has neither config.json (Hugging Face) nor a .gguf file.")
    raise ValueError(f"--model {spec!r} is not a file or folder here, nor a preset. Use smollm2, a .gguf file, a "
                     f"Hugging Face folder, or one of: {', '.join(PRESETS)} (random weights).")


def parse_overrides(items: list[str]) -> dict:
    """`KEY=VALUE` pairs; values parsed as JSON when they can be (numbers, true/false), else kept as strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set num_hidden_layers=2.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def layer_table(model, errors: dict[str, float]) -> str:
    """One row per quantized layer: shape, bytes before (bf16) and after, relative error."""
    from qerl.models.streaming import quantized_modules

    lines = [f"{'layer':<48} {'shape':>13} {'bf16 KiB':>10} {'4-bit KiB':>10} {'rel. error':>10}"]
    for name, layer in quantized_modules(model).items():
        dense = layer.in_features * layer.out_features * 2
        err = errors.get(name)
        lines.append(f"{name:<48} {f'{layer.out_features}x{layer.in_features}':>13} {dense / 1024:>10.1f} "
                     f"{layer.nbytes / 1024:>10.1f} {'n/a' if err is None else f'{err:.5f}':>10}")
    if errors:
        values = list(errors.values())
        lines.append(f"relative error over {len(values)} layers: mean {sum(values) / len(values):.5f}, "
                     f"min {min(values):.5f}, max {max(values):.5f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qerl quantize", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", required=True, help="smollm2, a .gguf file, an HF folder, or a preset: "
                   + ", ".join(PRESETS))
    p.add_argument("--quantizer", required=True, help="a registered quantizer (qerl list quantizers): NVFP4, MXFP4, NF4")
    p.add_argument("--output", required=True, help="directory to write the checkpoint to")
    p.add_argument("--skip", nargs="*", default=["lm_head"], help="Linear layers kept in bf16 (name or suffix)")
    p.add_argument("--format", choices=FORMATS, default="qerl",
                   help="qerl: safetensors + manifest (reloadable by qerl); compressed-tensors: NVFP4 for vLLM")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bfloat16", help="dtype of the dense parts and of weights before quantizing")
    p.add_argument("--seed", type=int, default=0, help="seed of random-init presets")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for presets")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from qerl.models.streaming import LoadError
    from qerl.quantizers import QuantizationError
    from qerl.registry import QUANTIZERS, RegistryError

    try:
        quantizer = QUANTIZERS.get(args.quantizer)()
        if args.format == "compressed-tensors" and quantizer.format != "nvfp4":
            raise ValueError(f"--format compressed-tensors writes NVFP4 only (vLLM's nvfp4-pack-quantized); "
                             f"--quantizer {args.quantizer} is {quantizer.format}. Use --format qerl.")
        loader = model_loader(args.model, args.seed, parse_overrides(args.set))
        model, tokenizer = loader.load(quantizer, dtype=args.dtype, device=args.device, skip=tuple(args.skip),
                                       measure_errors=True)
    except (RegistryError, ValueError, LoadError, QuantizationError, FileNotFoundError) as exc:
        print(f"qerl quantize: {exc}", file=sys.stderr)
        return 2
    report = loader.last_report
    print(layer_table(model, report.layer_errors))
    print(report.summary())
    if args.format == "qerl":
        from qerl.quantizers.checkpoint import save_quantized

        save_quantized(model, args.output)
    else:
        from qerl.quantizers.compressed_tensors import export_compressed_tensors

        export_compressed_tensors(model, args.output)
    tokenizer.save_pretrained(args.output)
    with open(os.path.join(args.output, "quantize_report.json"), "w") as f:
        json.dump({**report.to_dict(), "format": args.format, "model_arg": args.model}, f, indent=1)
    written = sum(os.path.getsize(os.path.join(args.output, f)) for f in os.listdir(args.output))
    print(f"wrote {args.output} ({args.format}): {written / 2**20:.1f} MiB on disk; size in memory "
          f"{report.dense_bytes / 2**20:.1f} MiB ({report.dtype}) -> {report.final_bytes / 2**20:.1f} MiB")
    return 0
