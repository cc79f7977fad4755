"""Functions that run inside the vLLM worker (through `LLM.collective_rpc`): LoRA from tensors, norms, AQN noise.

Each takes the worker as its first argument. With the engine in our process (multiprocessing off, the
default of the `VLLM` backend) the tensors are passed by reference; with worker processes vLLM pickles
these module-level functions and their arguments (set `VLLM_ALLOW_INSECURE_SERIALIZATION=1`).
"""
from __future__ import annotations

import torch

NOISE_ATTR = "_qerl_clean_norms"


def _model(worker):
    return worker.model_runner.model


def load_lora_tensors(worker, lora_id: int, config: dict, tensors: dict[str, torch.Tensor]) -> int:
    """Register an adapter built from in-memory peft tensors under `lora_id`, replacing every other adapter.

    Same steps as vLLM's own loader (`WorkerLoRAManager._load_adapter`), minus reading a folder.
    Returns the number of adapted modules.
    """
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper

    manager = worker.model_runner.lora_manager
    adapters = manager._adapter_manager
    helper = PEFTHelper.from_dict({**config, "vllm_max_position_embeddings": manager.max_position_embeddings})
    helper.validate_legal(manager.lora_config)
    model = adapters.model
    mapper = getattr(model, "hf_to_vllm_mapper", None)
    lora = LoRAModel.from_lora_tensors(
        lora_id, tensors, helper, device="cpu", dtype=manager.lora_config.lora_dtype,
        model_vocab_size=manager.vocab_size, weights_mapper=mapper.get_rename_mapper() if mapper else None,
        skip_prefixes=getattr(model, "lora_skip_prefixes", None))
    if not lora.loras:
        raise ValueError("the adapter has no LoRA tensors the engine recognises")
    for old in list(adapters.list_adapters()):
        adapters.remove_adapter(old)
    adapters.add_adapter(lora)
    adapters.activate_adapter(lora_id)
    return len(lora.loras)


def lora_dtype(worker) -> torch.dtype | None:
    """The dtype the engine keeps adapters in (vLLM's `lora_dtype`, "auto" resolved to the model's), or None."""
    kind = getattr(getattr(worker.model_runner, "lora_manager", None), "lora_config", None)
    kind = getattr(kind, "lora_dtype", None)
    return kind if isinstance(kind, torch.dtype) else None


def load_named_weights(worker, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Copy trained dense tensors (norm scales) in through the model's own `load_weights`; return the names taken."""
    loaded = _model(worker).load_weights(list(tensors.items()))
    return sorted(loaded) if loaded is not None else sorted(tensors)


def add_norm_noise(worker, noise: dict[str, torch.Tensor]) -> dict:
    """Add each `noise[name]` (float32, length d) to the weight of the engine's RMSNorm `name`, in place.

    Clean copies are kept on the worker and put back by `restore_norms`. Same numerics as
    `qerl.noise.inject.noisy_norms`: added in float32, rounded once to the weight's dtype (the engine's
    norms are float32 when the `VLLM` backend built it for a policy with float32 norms).
    Returns what the engine's weights really moved by: {"changes": noisy - clean, "clean": the clean weights,
    "drawn": Z (all float64, all channels in order, copied to the host once), "dtype": the weights' dtype(s)}.
    """
    from vllm.model_executor.layers.layernorm import RMSNorm

    if getattr(worker, NOISE_ATTR, None):
        raise RuntimeError("AQN noise is already applied to the vLLM engine; restore it before adding more.")
    modules = dict(_model(worker).named_modules())
    missing = [n for n in noise if not isinstance(modules.get(n), RMSNorm)]
    if missing:
        have = sorted(n for n, m in modules.items() if isinstance(m, RMSNorm))
        raise ValueError(f"no vLLM RMSNorm named {missing[:3]} in the engine's model; its RMSNorm layers are "
                         f"{have[:6]}{' ...' if len(have) > 6 else ''}")
    clean, changes, dtypes = {}, [], set()
    with torch.no_grad():
        for name, z in noise.items():
            weight = modules[name].weight
            clean[name] = weight.detach().clone()
            wide = torch.promote_types(weight.dtype, torch.float32)
            weight.copy_((weight.detach().to(wide) + z.to(device=weight.device, dtype=wide)).to(weight.dtype))
            changes.append(weight.detach().double() - clean[name].double())  # on the engine's device: no sync
            dtypes.add(str(weight.dtype).removeprefix("torch."))
        if changes:  # one device-to-host copy for every norm
            moved, before = torch.stack([torch.cat(changes), torch.cat([w.double() for w in clean.values()])]).cpu()
        else:
            moved = before = torch.zeros(0, dtype=torch.float64)
    setattr(worker, NOISE_ATTR, clean)
    return {"changes": moved, "clean": before,
            "drawn": torch.cat([z.double().cpu() for z in noise.values()]) if noise else torch.zeros(0),
            "dtype": "/".join(sorted(dtypes))}


def restore_norms(worker) -> int:
    """Copy back the clean norm weights saved by `add_norm_noise` (bit-exact); return how many."""
    clean = getattr(worker, NOISE_ATTR, None) or {}
    modules = dict(_model(worker).named_modules())
    with torch.no_grad():
        for name, weight in clean.items():
            modules[name].weight.copy_(weight)
    setattr(worker, NOISE_ATTR, None)
    return len(clean)


def norm_dtypes(worker) -> dict[str, str]:
    """{name: dtype} of the engine's RMSNorm weights (float32 ones hold AQN noise)."""
    from vllm.model_executor.layers.layernorm import RMSNorm

    return {n: str(m.weight.dtype).removeprefix("torch.") for n, m in _model(worker).named_modules()
            if isinstance(m, RMSNorm) and isinstance(getattr(m, "weight", None), torch.Tensor)}


def read_weights(worker, names: list[str]) -> dict[str, torch.Tensor]:
    """CPU copies of the engine's parameters `names` (for tests and checks)."""
    params = dict(_model(worker).named_parameters())
    return {n: params[n].detach().cpu().clone() for n in names}


def linear_methods(worker) -> dict[str, int]:
    """{scheme or quant-method class name: layer count} over the engine's linear layers: how the base is served
    (e.g. `CompressedTensorsW4A16Fp4` for NVFP4, `UnquantizedLinearMethod` for dense layers)."""
    from vllm.model_executor.layers.linear import LinearBase

    counts: dict[str, int] = {}
    for module in _model(worker).modules():
        if isinstance(module, LinearBase):
            scheme = getattr(module, "scheme", None)
            name = type(scheme if scheme is not None else module.quant_method).__name__
            counts[name] = counts.get(name, 0) + 1
    return counts
