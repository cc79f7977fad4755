"""Tuned configs for vLLM's Triton LoRA kernels (shrink, expand): the folder format vLLM 0.22 reads, written and
checked here and handed to an engine (`VLLM(lora_configs=...)`; tuned by `benchmarks/lora_tune.py`).

How vllm 0.22.0 finds them (vllm/lora/ops/triton_ops/utils.py; README_TUNING.md next to it):

- `load_lora_op_config(op_type, add_inputs)` (l.164-194, `functools.lru_cache`): only when the environment variable
  `VLLM_TUNED_CONFIG_FOLDER` is set (and `VLLM_BATCH_INVARIANT` is off) it reads `<folder>/<gpu>_SHRINK.json` or
  `<folder>/<gpu>_EXPAND_<TRUE|FALSE>.json` (`add_inputs`; qerl's engines call expand with True), where `<gpu>`
  is `torch.cuda.get_device_name()` with every " " and "-" made "_" (`NVIDIA_H100_80GB_HBM3`). A missing file:
  one warning ("No LoRA kernel configs found in ..."), then the defaults.
- `get_lora_op_configs(op_type, max_loras, batch, hidden_size, rank, num_slices, add_inputs)` (l.197-315,
  `lru_cache`): the config is `data[max_loras][num_slices][m][k][n]`, every key a decimal string; m = the tokens in
  the call, shrink: k = the input width, n = the rank; expand: k = the rank, n = the widest output slice. max_loras,
  m, k and n fall back to the nearest key; **num_slices has none** (a KeyError inside the engine). The dict found
  replaces the defaults whole: shrink reads block_m, block_n, block_k, split_k, num_warps, num_stages, num_ctas
  (group_size_m if there), expand the same without split_k (lora_shrink_op.py:202-217, lora_expand_op.py:213-227).
- The ops pass max_loras = `lora_ids.size(0)` = the engine's max_loras + 1 (the no-adapter slot): qerl's engines
  (max_loras 1) look up "2". vLLM packs q/k/v into one 3-slice layer and gate/up into a 2-slice one, so a Qwen2 or
  Llama engine needs num_slices 1, 2 and 3 in both files.
- When it is read: at the first kernel call of the process (the engine's profiling run, inside `vllm.LLM(...)`);
  both functions then cache, and `EngineCore.__init__` caches every vLLM environment variable
  (`envs.enable_envs_cache()`, vllm/v1/engine/core.py:232). `handed_to_engine` sets the variable around the build
  and clears those caches first, so an engine built later in the same process reads its own setting.
"""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENV = "VLLM_TUNED_CONFIG_FOLDER"
#: keys each op reads from a config (vllm 0.22 lora_shrink_op.py:210-217, lora_expand_op.py:222-227)
REQUIRED = {"shrink": ("block_m", "block_n", "block_k", "split_k", "num_warps", "num_stages", "num_ctas"),
            "expand": ("block_m", "block_n", "block_k", "num_warps", "num_stages", "num_ctas")}
#: num_slices of a Qwen2 / Llama engine's LoRA layers: o_proj and down_proj 1, gate_up 2, qkv 3
SLICES = ("1", "2", "3")
KEY = "rollout.init_args.lora_configs"
_handed: dict[str, bool] = {"once": False}  # has this process handed vLLM a folder (its caches may hold it)


class LoRAConfigError(ValueError):
    """A `lora_configs` folder vLLM could not use; the message says what is wrong and what to do."""


def gpu_prefix(gpu_name: str) -> str:
    """`torch.cuda.get_device_name()` as vLLM spells it in the file names."""
    return gpu_name.replace(" ", "_").replace("-", "_")


def config_files(gpu_name: str) -> dict[str, str]:
    """{op: file name} vLLM reads on `gpu_name` (expand: the add_inputs=True file, the one qerl's engines use)."""
    prefix = gpu_prefix(gpu_name)
    return {"shrink": f"{prefix}_SHRINK.json", "expand": f"{prefix}_EXPAND_TRUE.json"}


def write_configs(folder: str, gpu_name: str, op: str, entries: list[tuple[int, int, int, int, int, dict]]) -> str:
    """Merge `entries` ((max_loras, num_slices, m, k, n, config), k/n as vLLM keys them for `op`) into the op's file
    for `gpu_name` in `folder` (created if missing); returns the file's path."""
    if op not in REQUIRED:
        raise ValueError(f"op {op!r} is not one of {sorted(REQUIRED)}")
    path = Path(folder, config_files(gpu_name)[op])
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for max_loras, slices, m, k, n, config in entries:
        missing = [key for key in REQUIRED[op] if key not in config]
        if missing:
            raise ValueError(f"{op} config for m={m} k={k} n={n} lacks {missing}: vLLM reads them without defaults")
        node = data
        for key in (max_loras, slices, m, k):
            node = node.setdefault(str(int(key)), {})
        node[str(int(n))] = dict(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    return str(path)


def check_folder(folder: str, gpu_name: str | None = None) -> dict[str, str]:
    """{op: file} of `folder` for `gpu_name`, or a LoRAConfigError saying what is missing. Without `gpu_name`
    (no GPU yet) only that the folder exists and holds some config file."""
    where = f"`{KEY}`={folder!r}"
    if not os.path.isdir(folder):
        raise LoRAConfigError(f"VLLM: {where} is not a folder. Point it at the output of `python "
                              "benchmarks/lora_tune.py --out DIR` (DIR/lora-configs) or set it to null.")
    present = sorted(p.name for p in Path(folder).glob("*.json") if "_SHRINK" in p.name or "_EXPAND_" in p.name)
    if gpu_name is None:
        if not present:
            raise LoRAConfigError(f"VLLM: {where} holds no LoRA kernel config (*_SHRINK.json, *_EXPAND_TRUE.json); "
                                  "tune them with `python benchmarks/lora_tune.py --out DIR` on the GPU you train on.")
        return {}
    wanted = config_files(gpu_name)
    missing = [name for name in wanted.values() if name not in present]
    if missing:
        raise LoRAConfigError(
            f"VLLM: {where} holds no LoRA kernel config for this GPU ({gpu_name}): vLLM reads "
            f"{' and '.join(wanted.values())}; missing {', '.join(missing)}; found {', '.join(present) or 'none'}. "
            "Configs are per card: run `python benchmarks/lora_tune.py --out DIR` on this one, or set it to null.")
    for op, name in wanted.items():
        _check_file(Path(folder, name), op, where)
    return {op: str(Path(folder, name)) for op, name in wanted.items()}


def _check_file(path: Path, op: str, where: str) -> None:
    """The structure vLLM indexes: data[max_loras][num_slices][m][k][n] = {the op's keys}, num_slices 1-3 present."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LoRAConfigError(f"VLLM: {where}: {path.name} is not readable JSON ({exc}).") from None
    if not isinstance(data, dict) or not data:
        raise LoRAConfigError(f"VLLM: {where}: {path.name} holds no configs.")
    for max_loras, by_slices in data.items():
        lacking = [s for s in SLICES if s not in by_slices]
        if lacking:
            raise LoRAConfigError(
                f"VLLM: {where}: {path.name} has no num_slices {', '.join(lacking)} under max_loras {max_loras}: vLLM "
                "looks num_slices up without a fallback (qkv is 3 slices, gate_up 2, o/down 1) and would stop with a "
                "KeyError. Tune all of the model's projections (benchmarks/lora_tune.py does).")
        for slices, by_m in by_slices.items():
            for m, by_k in by_m.items():
                for k, by_n in by_k.items():
                    for n, config in by_n.items():
                        missing = [key for key in REQUIRED[op] if key not in config]
                        if missing:
                            raise LoRAConfigError(
                                f"VLLM: {where}: {path.name}[{max_loras}][{slices}][{m}][{k}][{n}] lacks {missing} "
                                "(vLLM reads them with no default).")


def _clear_vllm_caches() -> None:
    """Forget what vLLM has read of the folder in this process: its cached environment and LoRA config lookups."""
    envs = sys.modules.get("vllm.envs")
    if envs is not None and hasattr(envs, "disable_envs_cache"):
        envs.disable_envs_cache()  # EngineCore.__init__ turns it on again at its end
    utils = sys.modules.get("vllm.lora.ops.triton_ops.utils")
    for name in ("load_lora_op_config", "get_lora_op_configs"):
        cache_clear = getattr(getattr(utils, name, None), "cache_clear", None)
        if cache_clear is not None:
            cache_clear()


@contextmanager
def handed_to_engine(folder: str | None):
    """Build a vLLM engine inside this: it reads its LoRA kernel configs from `folder` (None: vLLM's defaults, or
    what the user exported as VLLM_TUNED_CONFIG_FOLDER). The variable is put back afterwards; vLLM has then read
    it (at its profiling run). One process, one setting at a time: engines alive together share vLLM's cache."""
    if folder is None and not _handed["once"]:
        yield  # nothing of ours in vLLM's caches: leave them and the environment alone
        return
    before = os.environ.get(ENV)
    _clear_vllm_caches()
    if folder is not None:
        os.environ[ENV] = os.path.abspath(folder)
        _handed["once"] = True
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
