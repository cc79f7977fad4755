"""Our RMSNorm kernel for the engine's float32 norm weights, registered through vLLM's IR op hooks.

vLLM (0.22 on CUDA, 0.32 on the CPU build) computes RMSNorm through the IR ops `vllm.ir.ops.rms_norm` and
`fused_add_rms_norm`; each op has providers (`vllm_c`: the fused CUDA kernel, `native`: PyTorch code) tried in the
engine's `ir_op_priority` order, each saying which arguments it takes (`vllm/kernels/vllm_c.py`: the weight in the
activations' dtype). AQN's float32 norms (`qerl.rollout.vllm.norms`) are refused by `vllm_c`, so without torch.compile
(`compile: false`) they ran as the native code, ~8 kernels a norm: +22% on a 7B NVFP4 generate at 8 rows (H100,
2026-12-07, `step-...-2026-12-07-7b-aqn-f32-sigma0.json`). This module registers `qerl_f32w` (the Triton kernels of
`qerl.kernels.rms_norm`, the same arithmetic as `native`) for both ops, taking only a float32 weight over bf16/fp16
CUDA activations, and puts it first in the engine's priority; vLLM appends its platform defaults after it, so every
other norm still goes to `vllm_c` or `native`. With torch.compile, inductor fuses the native code itself and the
priority is left to vLLM; so it is for an engine whose model runs in other processes (tensor parallelism, or
`VLLM_ENABLE_V1_MULTIPROCESSING=1`), which would not know the provider - and do not get float32 norms either
(`qerl.rollout.vllm.norms`). Nothing in vLLM's files is changed: `register_impl` and `ir_op_priority` are its hooks.
"""
from __future__ import annotations

import os

import torch

PROVIDER = "qerl_f32w"
OPS = ("rms_norm", "fused_add_rms_norm")


def _rms_norm(x: torch.Tensor, weight: torch.Tensor | None, epsilon: float,
              variance_size: int | None = None) -> torch.Tensor:
    from qerl.kernels.rms_norm import rms_norm_f32w

    return rms_norm_f32w(x, weight, epsilon)


def _rms_norm_takes(x, weight, epsilon, variance_size=None) -> bool:
    from qerl.kernels.rms_norm import supports

    return variance_size is None and x.is_cuda and supports(x, weight)


def _fused_add_rms_norm(x: torch.Tensor, x_residual: torch.Tensor, weight: torch.Tensor | None, epsilon: float,
                        variance_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    from qerl.kernels.rms_norm import fused_add_rms_norm_f32w_

    return fused_add_rms_norm_f32w_(x, x_residual, weight, epsilon)


def _fused_add_rms_norm_takes(x, x_residual, weight, epsilon, variance_size=None) -> bool:
    from qerl.kernels.rms_norm import supports

    # in place: both as whole (rows, hidden) blocks, else the next provider (a view the kernel would refuse)
    return (variance_size is None and x.is_cuda and supports(x, weight) and x_residual.dtype == x.dtype
            and x_residual.shape == x.shape and x.is_contiguous() and x_residual.is_contiguous())


def register() -> bool:
    """Register `qerl_f32w` for both ops once per process; False where this vLLM has no IR ops to register on."""
    try:
        from vllm import ir
    except ImportError:
        return False
    ops = {name: getattr(ir.ops, name, None) for name in OPS}
    if any(op is None or not hasattr(op, "register_impl") for op in ops.values()):
        return False
    supported = torch.cuda.is_available()
    if PROVIDER not in ops["rms_norm"].impls:
        ops["rms_norm"].register_impl(PROVIDER, supported=supported, supports_args=_rms_norm_takes)(_rms_norm)
    if PROVIDER not in ops["fused_add_rms_norm"].impls:
        ops["fused_add_rms_norm"].register_impl(PROVIDER, supported=supported, supports_args=_fused_add_rms_norm_takes,
                                                inplace=True)(_fused_add_rms_norm)
    return True


def in_process(tensor_parallel_size: int) -> bool:
    """Whether the engine's model runs in this process (where `register` reaches it): one GPU and vLLM's engine core
    not in a process of its own (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, which the backend sets unless the user did)."""
    return tensor_parallel_size == 1 and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") == "0"


def engine_kwargs(float32_norms: bool, on_cuda: bool, compiled: bool, tensor_parallel_size: int = 1) -> dict:
    """The `vllm.LLM` keyword that puts `qerl_f32w` first for the engine's norms: only for float32 norms on CUDA
    without torch.compile, in an engine that runs in this process (a worker process would not know the provider
    and vLLM would refuse the priority), and only where the provider could be registered; otherwise nothing."""
    if not (float32_norms and on_cuda and not compiled and in_process(tensor_parallel_size)) or not register():
        return {}
    return {"ir_op_priority": {name: [PROVIDER] for name in OPS}}
