"""`qerl export`: a trained adapter and its base as a folder that vLLM serves, or merged into one bf16 model.

    qerl export --model smollm2 --quantizer NVFP4 --adapter runs/x/version_0/adapter/final --output out/served
    qerl export --model smollm2 --quantizer NVFP4 --adapter runs/x/version_0/adapter/final --output out/merged --merge

Without --merge (a deployable folder): the base as compressed-tensors NVFP4 (or MXFP4) - config.json with its
`quantization_config`, model.safetensors, the tokenizer - and the peft adapter in `adapter/`. Trained norms
(`qerl_norms.safetensors` of the adapter folder) are written into the base, since a LoRA adapter cannot carry
them. Serve it with `vllm serve <output> --enable-lora --lora-modules policy=<output>/adapter`.
With --merge: a plain Hugging Face model folder in --dtype (bf16) whose Linear weights are the dequantized base
plus the merged LoRA update, for transformers, TGI, llama.cpp conversion or `vllm serve <output>`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from qerl.models.random_init import PRESETS

MANIFEST = "qerl_export.json"
#: the values vLLM accepts for --max-lora-rank (vLLM 0.22 / 0.32)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that holds an adapter of rank `rank`."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), rank)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qerl export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", required=True, help="the base the adapter was trained on: smollm2, a .gguf file, a "
                   "Hugging Face folder (dense or compressed-tensors), or a preset: " + ", ".join(PRESETS))
    p.add_argument("--adapter", required=True, help="the trained adapter folder (e.g. <run>/adapter/final)")
    p.add_argument("--output", required=True, help="folder to write (must not exist, or be empty)")
    p.add_argument("--quantizer", default=None, help="the base's 4-bit format during training: NVFP4 or MXFP4 "
                   "(needed without --merge); with --merge any format, or none for a dense base")
    p.add_argument("--merge", action="store_true", help="write one dense model with the adapter merged in")
    p.add_argument("--dtype", default="bfloat16", help="dtype of the merged model (--merge) or of the dense parts")
    p.add_argument("--skip", nargs="*", default=["lm_head"], help="Linear layers the training run kept dense")
    p.add_argument("--seed", type=int, default=0, help="weights seed of a random-init preset")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides of a preset")
    return p


class ExportInputError(ValueError):
    """A flag or input folder that cannot be exported; the message names it and says what to do."""


def _check_output(path: str) -> None:
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ExportInputError(f"--output {path} exists and is not an empty folder; choose a new folder.")


def fold_norms(model, norms: dict, adapter: str) -> None:
    """Write the adapter's trained norm weights into the (un-wrapped) base model."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in norms.items():
            param = params.get(name)
            if param is None or tuple(param.shape) != tuple(value.shape):
                found = "no such weight" if param is None else f"shape {tuple(param.shape)}"
                raise ExportInputError(f"--adapter {adapter}: trained norm {name!r} {tuple(value.shape)} does not fit "
                                       f"--model ({found}); export with the base the adapter was trained on.")
            param.copy_(value.to(param.dtype))


def copy_adapter(adapter: str, folder: str, base: str) -> str:
    """The peft files of `adapter` into `folder`, with `base_model_name_or_path` naming the exported base."""
    from qerl.lora.adapter_folder import CONFIG_FILE, WEIGHTS_FILE

    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(os.path.join(adapter, WEIGHTS_FILE), os.path.join(folder, WEIGHTS_FILE))
    with open(os.path.join(adapter, CONFIG_FILE)) as f:
        config = json.load(f)
    config["base_model_name_or_path"] = os.path.abspath(base)
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)
    return folder


def export(args) -> dict:
    """Write the export `args` describe; returns what the manifest records."""
    import torch

    from qerl.commands.quantize import model_loader, parse_overrides
    from qerl.evaluation.adapter import apply_adapter, check_adapter_fits, sha256_of
    from qerl.lora.adapter_folder import WEIGHTS_FILE, read_adapter_folder
    from qerl.registry import QUANTIZERS

    _check_output(args.output)
    dtype = getattr(torch, args.dtype, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ExportInputError(f"--dtype {args.dtype!r} is not a floating torch dtype (bfloat16, float16, float32).")
    quantizer = QUANTIZERS.get(args.quantizer)() if args.quantizer else None
    if not args.merge:
        from qerl.quantizers.compressed_tensors import COMPRESSED_FORMATS

        if quantizer is None or quantizer.format not in COMPRESSED_FORMATS:
            got = "none" if quantizer is None else f"{args.quantizer} ({quantizer.format})"
            raise ExportInputError(f"--quantizer is {got}: the deployable folder stores the base as compressed-tensors "
                                   "NVFP4 or MXFP4, which vLLM serves; give --quantizer NVFP4 (or MXFP4), or use "
                                   "--merge for a dense model.")
    config, tensors, norms = read_adapter_folder(args.adapter)
    loader = model_loader(args.model, args.seed, parse_overrides(args.set))
    load_dtype = torch.float32 if args.merge else dtype
    model, tokenizer = loader.load(quantizer, dtype=load_dtype, device="cpu", skip=tuple(args.skip))
    check_adapter_fits(model, config, tensors, args.model, args.adapter)
    fold_norms(model, norms, args.adapter)
    record = {"model": args.model, "quantizer": args.quantizer, "adapter": os.path.abspath(args.adapter),
              "adapter_sha256": sha256_of(os.path.join(args.adapter, WEIGHTS_FILE)), "norms_folded": sorted(norms),
              "rank": int(config.get("r", 0)), "merged": bool(args.merge), "dtype": args.dtype}
    os.makedirs(args.output, exist_ok=True)
    if args.merge:
        from qerl.lora.merge import merge_to_dense

        peft_model, _ = apply_adapter(model, args.adapter, args.model)
        merged = merge_to_dense(peft_model, dtype)
        merged.save_pretrained(args.output)
    else:
        from qerl.quantizers.compressed_tensors import export_compressed_tensors

        export_compressed_tensors(model, args.output)
        record["adapter_folder"] = copy_adapter(args.adapter, os.path.join(args.output, "adapter"), args.output)
    tokenizer.save_pretrained(args.output)
    with open(os.path.join(args.output, MANIFEST), "w") as f:
        json.dump(record, f, indent=1)
    return record


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from qerl.evaluation.adapter import AdapterError
    from qerl.lora.adapter_folder import AdapterFolderError
    from qerl.models.streaming import LoadError
    from qerl.quantizers.compressed_tensors import ExportError
    from qerl.registry import RegistryError

    try:
        record = export(args)
    except (ExportInputError, AdapterError, AdapterFolderError, LoadError, ExportError, RegistryError, ValueError,
            FileNotFoundError) as exc:
        print(f"qerl export: error: {exc}", file=sys.stderr)
        return 2
    out = os.path.abspath(args.output)
    if record["merged"]:
        print(f"wrote {out}: a {args.dtype} Hugging Face model with the adapter merged in "
              f"(transformers: AutoModelForCausalLM.from_pretrained({out!r}); vLLM: vllm serve {out})")
    else:
        print(f"wrote {out}: the base as compressed-tensors {args.quantizer.upper()} and the adapter in {out}/adapter"
              f"{' (trained norms folded into the base)' if record['norms_folded'] else ''}; serve it with:\n"
              f"  vllm serve {out} --enable-lora --max-lora-rank {vllm_max_lora_rank(record['rank'])} "
              f"--lora-modules policy={out}/adapter")
    return 0
