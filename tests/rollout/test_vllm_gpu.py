"""The `VLLM` backend on a CUDA device with the real vLLM (0.22 on the H200): FP4 paths, sync, AQN, sleep mode.

One bf16 engine for the file (NVFP4 base served as compressed-tensors, sleep mode on, eager so it starts in
seconds); the per-format checks build their engines in child processes (one vLLM engine per process).
Tolerances: both sides run bf16 activations with different kernels (vLLM's Marlin FP4 GEMM vs qerl's), so
log-probs agree to ~1e-2 per token, not the CPU file's float32 1e-3; the change an optimizer step makes is
compared too, and it agrees far closer than the absolute values.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from qerl.types import SamplingConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                                  reason="needs vllm (the CUDA build)")]

#: tiny Qwen2, head_dim 128, widths that vLLM's Marlin FP4 kernels take (multiples of 128)
CONFIG = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 2, "num_key_value_heads": 2}
TOKEN_TOL = 3e-2  # mean |log p_engine - log p_policy| per token, bf16 both sides (H200: 0.013-0.014 measured)
NORMS = [f"model.layers.{i}.{n}.weight" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")]
PROMPT, CONTINUATION = list(b"12+35="), list(b"47<")


def tiny_policy(quantizer: str = "NVFP4"):
    from qerl.lora.apply import apply_lora
    from qerl.models import RandomInit

    model, tokenizer = RandomInit(config=CONFIG, seed=0).load(quantizer=quantizer, dtype="bfloat16", device="cuda")
    torch.manual_seed(0)
    policy = apply_lora(model, rank=8, alpha=16.0, train_norms=True)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    return policy, tokenizer


@pytest.fixture(scope="module")
def engine():
    from qerl.rollout.vllm import VLLM

    policy, tokenizer = tiny_policy()
    backend = VLLM(max_model_len=256, gpu_memory_utilization=0.1, max_num_seqs=16, enable_sleep_mode=True,
                   enforce_eager=True)
    backend.setup(policy, tokenizer)
    yield backend, policy, tokenizer
    backend.close()


def policy_logprobs(policy, prompt, completion) -> torch.Tensor:
    from qerl.models.logprobs import completion_logprobs

    p, c = torch.tensor([prompt], device="cuda"), torch.tensor([completion], device="cuda")
    with torch.no_grad():
        return completion_logprobs(policy.eval(), p, torch.ones_like(p), c, torch.ones_like(c)).logprobs[0].float().cpu()


def engine_norms(backend) -> dict[str, torch.Tensor]:
    from qerl.rollout.vllm.worker import read_weights

    return backend.llm.collective_rpc(read_weights, args=(NORMS,))[0]


def test_nvfp4_base_is_served_by_vllms_fp4_scheme_not_a_dense_fallback(engine):
    backend, _, _ = engine
    methods = backend.engine_linear_methods()
    print("NVFP4 engine linear layers:", methods)
    assert backend.served_as.startswith("nvfp4")
    # 2 layers x (qkv, o, gate_up, down) in FP4; lm_head is no LinearBase in vLLM
    assert methods.get("CompressedTensorsW4A16Fp4") == 8 and set(methods) == {"CompressedTensorsW4A16Fp4"}


FORMAT_CHILD = textwrap.dedent("""
    import json, sys, warnings
    sys.path.insert(0, sys.argv[2])
    from test_vllm_gpu import tiny_policy
    from qerl.rollout.vllm import VLLM
    from qerl.types import SamplingConfig
    policy, tokenizer = tiny_policy(sys.argv[1])
    backend = VLLM(max_model_len=128, gpu_memory_utilization=0.08, max_num_seqs=4, enforce_eager=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend.setup(policy, tokenizer)
    out = backend.generate([list(b"1+1=")], SamplingConfig(n=2, max_new_tokens=4, seed=0))
    from qerl.models.mismatch import policy_logprobs
    mask = out.completion_mask.bool()
    mine = policy_logprobs(policy, out, 1.0)[mask]
    print("RESULT " + json.dumps({"methods": backend.engine_linear_methods(), "served_as": backend.served_as,
                                  "warnings": [str(w.message) for w in caught if "VLLM" in str(w.message)],
                                  "tokens": int(out.lengths.sum()), "kl": backend.last_metrics["rollout/mismatch_kl"],
                                  "engine_logprobs": out.logprobs[mask].tolist(), "policy_logprobs": mine.tolist()}))
""")


@pytest.mark.parametrize("quantizer, scheme", [("MXFP4", "CompressedTensorsW4A4Mxfp4"),
                                               ("NF4", "UnquantizedLinearMethod")])
def test_mxfp4_goes_through_vllms_mxfp4_path_and_nf4_is_served_dense_with_a_warning(quantizer, scheme):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", FORMAT_CHILD, quantizer, os.path.dirname(__file__)],
                          capture_output=True, text=True, env=env, timeout=400, check=False)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(line[-1][7:])
    print(quantizer, result)
    assert result["methods"] == {scheme: 8} and result["tokens"] == 8 and result["kl"] < 5e-5  # H200: 4e-6, 3e-6
    dense_warnings = [w for w in result["warnings"] if "served dense" in w]
    if quantizer == "NF4":
        assert result["served_as"] == "bfloat16" and "NF4 policy base is served dense" in dense_warnings[0]
    else:
        assert result["served_as"].startswith("mxfp4") and not dense_warnings


def test_after_an_optimizer_step_engine_and_policy_logprobs_move_together(engine):
    backend, policy, _ = engine
    trainable = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    saved = {n: p.detach().clone() for n, p in trainable.items()}
    before_hf, before_engine = policy_logprobs(policy, PROMPT, CONTINUATION), backend.score(PROMPT, CONTINUATION)
    from qerl.models.logprobs import completion_logprobs

    p = torch.tensor([PROMPT], device="cuda")
    c = torch.tensor([CONTINUATION], device="cuda")
    optimizer = torch.optim.SGD(trainable.values(), lr=0.05)  # lr 0.5 moved 6.6 nats, past bf16's agreement
    loss = -completion_logprobs(policy.train(), p, torch.ones_like(p), c, torch.ones_like(c)).logprobs.sum()
    loss.backward()
    optimizer.step()
    try:
        backend.sync_weights(policy)
        after_hf, after_engine = policy_logprobs(policy, PROMPT, CONTINUATION), backend.score(PROMPT, CONTINUATION)
        moved_hf, moved_engine = float((after_hf - before_hf).sum()), float((after_engine - before_engine).sum())
        print(f"step moved policy {moved_hf:.4f}, engine {moved_engine:.4f}; per-token |diff| before "
              f"{(before_engine - before_hf).abs().mean():.4f} after {(after_engine - after_hf).abs().mean():.4f}")
        assert moved_hf > 0.05 and abs(moved_engine - moved_hf) < 0.25 * moved_hf
        assert float((after_engine - after_hf).abs().mean()) < TOKEN_TOL
        norms = engine_norms(backend)
        trained = dict(policy.named_parameters())["base_model.model." + NORMS[0]].detach().cpu()
        assert torch.equal(norms[NORMS[0]], trained.to(norms[NORMS[0]].dtype))
    finally:
        with torch.no_grad():
            for n, q in trainable.items():
                q.copy_(saved[n])
        backend.sync_weights(policy)


def test_aqn_reaches_the_engine_and_the_norms_come_back_bit_exact(engine):
    backend, _, _ = engine
    clean, clean_score = engine_norms(backend), backend.score(PROMPT, CONTINUATION)
    with backend.noise(0.05, seed=3):
        noisy = engine_norms(backend)
        noisy_score = backend.score(PROMPT, CONTINUATION)
    assert all(not torch.equal(noisy[n], clean[n]) for n in NORMS)
    assert float((noisy_score - clean_score).abs().max()) > 1e-3
    after = engine_norms(backend)
    assert all(torch.equal(after[n], clean[n]) for n in NORMS)
    assert torch.equal(backend.score(PROMPT, CONTINUATION), clean_score)


def test_generation_logs_a_small_mismatch_kl(engine):
    backend, _, _ = engine
    rollout = backend.generate([PROMPT, list(b"7*6=")], SamplingConfig(n=4, max_new_tokens=16, seed=1))
    kl = backend.last_metrics["rollout/mismatch_kl"]
    print("mismatch metrics:", backend.last_metrics)
    assert rollout.completion_ids.shape[0] == 8 and 0 <= kl < 5e-5  # H200: 4.1e-6 (1.4e-4 with unshared fused scales)


def test_sleep_mode_frees_the_engine_memory_and_wakes_to_generate(engine):
    backend, _, _ = engine
    torch.cuda.synchronize()
    free_awake = torch.cuda.mem_get_info()[0]
    backend.release_memory()
    torch.cuda.synchronize()
    freed = torch.cuda.mem_get_info()[0] - free_awake
    rollout = backend.generate([PROMPT], SamplingConfig(n=2, max_new_tokens=8, seed=0))  # wakes up
    torch.cuda.synchronize()
    taken_back = free_awake - torch.cuda.mem_get_info()[0]
    print(f"sleep freed {freed / 2**30:.2f} GiB; waking took back {taken_back / 2**30:.2f} GiB "
          f"(engine budget {0.1 * torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB)")
    budget = 0.1 * torch.cuda.get_device_properties(0).total_memory
    assert freed > 0.5 * budget  # the KV cache (most of the budget) is dropped while asleep
    assert abs(taken_back) < 0.1 * budget and int(rollout.lengths.min()) > 0
    # the woken engine runs the weights it had: its sampled tokens' log-probs still match the policy's
    print("mismatch after waking:", backend.last_metrics)
    assert 0 <= backend.last_metrics["rollout/mismatch_kl"] < 5e-5



def test_waking_first_returns_the_blocks_torch_cached_during_the_update(engine):
    """vLLM maps its sleeping pool back with cuMemCreate, past torch's caching allocator: blocks that the update
    freed but torch still caches must go back to the driver first (a 32B 16 x 2,048 step on a 79 GiB card ran out
    of memory in `wake_up` without it, H200, 2026-12-02)."""
    backend, _, _ = engine
    backend.release_memory()
    torch.cuda.synchronize()
    budget = 0.1 * torch.cuda.get_device_properties(0).total_memory
    scratch_bytes = int(torch.cuda.mem_get_info()[0] - 0.5 * budget)  # the update: all but half the engine's pool
    scratch = torch.empty(scratch_bytes, dtype=torch.uint8, device="cuda")
    del scratch
    assert torch.cuda.memory_reserved() >= scratch_bytes  # freed, still cached: waking needs it back
    rollout = backend.generate([PROMPT], SamplingConfig(n=2, max_new_tokens=8, seed=0))  # wakes up
    assert int(rollout.lengths.min()) > 0 and torch.cuda.memory_reserved() < scratch_bytes

AUTO_CHILD = textwrap.dedent("""
    import json, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from test_vllm_gpu import tiny_policy
    from qerl.rollout.vllm import VLLM
    from qerl.types import SamplingConfig
    policy, tokenizer = tiny_policy()
    backend = VLLM(gpu_memory_utilization="auto", max_model_len=128, max_num_seqs=4, enforce_eager=True)
    need = backend.engine_estimate(policy, torch.device("cuda")).need
    torch.cuda.synchronize()
    free_before = torch.cuda.mem_get_info()[0]
    backend.setup(policy, tokenizer)
    torch.cuda.synchronize()
    taken = free_before - torch.cuda.mem_get_info()[0]
    out = backend.generate([list(b"1+1=")], SamplingConfig(n=2, max_new_tokens=4, seed=0))
    print("RESULT " + json.dumps({"utilization": backend.resolved_utilization, "need": need, "taken": taken,
                                  "total": torch.cuda.get_device_properties(0).total_memory,
                                  "tokens": int(out.lengths.sum())}))
""")


def test_auto_utilization_starts_an_engine_that_takes_about_what_the_plan_says():
    """`gpu_memory_utilization: auto` (the 3B-32B recipes' setting) on the card: the engine starts with the
    fraction the plan computed and takes no more of the card than that fraction."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", AUTO_CHILD, os.path.dirname(__file__)], capture_output=True,
                          text=True, env=env, timeout=400, check=False)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, done.stdout[-2000:] + done.stderr[-4000:]
    r = json.loads(line[-1][7:])
    print(f"auto: utilization {r['utilization']}, plan's need {r['need'] / 2**30:.2f} GiB, engine took "
          f"{r['taken'] / 2**30:.2f} GiB of {r['total'] / 2**30:.0f} GiB")
    assert r["tokens"] == 8
    assert r["need"] <= r["utilization"] * r["total"] < r["need"] + 0.01 * r["total"]  # need, rounded up to 0.01
    assert r["taken"] <= r["utilization"] * r["total"] + 2**30  # + the CUDA context vLLM's budget does not count
