"""AQN in a bfloat16 policy: float32 norms hold the noise the schedule asks for, in the HF path and the fast engine.

Realized sigma and moved fraction are measured on the weights each engine multiplies by (issue #20).
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from qerl.models.byte_tokenizer import byte_tokenizer
from qerl.noise.inject import DEFAULT_TARGETS, noisy_norms, targeted_norms
from qerl.noise.precision import keep_norms_float32, measure_noise
from qerl.rollout import HF
from qerl.types import SamplingConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SIGMAS = (1e-2, 1e-3, 5e-4, 1e-4)
#: hidden 256 x 2 layers x 2 norms = 1,024 channels: the sample std of the draw is within ~2% of sigma
WIDE = {"hidden_size": 256, "intermediate_size": 512}
PROMPTS = ["What is 2 + 3?", "Hi there"]


@pytest.fixture
def bf16_policy(tiny_llama):
    tok = byte_tokenizer()
    model = tiny_llama(seed=3, vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       max_position_embeddings=256, **WIDE).to(torch.bfloat16)
    return model, tok


def norm_weights(model) -> list[torch.Tensor]:
    return [w for ws in targeted_norms(model).values() for w in ws]


def assert_held(metrics: dict, sigma: float) -> None:
    assert abs(metrics["noise/realized_sigma"] / sigma - 1) < 0.1, (sigma, metrics)
    assert metrics["noise/moved_fraction"] > 0.99, (sigma, metrics)


def test_bf16_norms_lose_small_sigmas_and_warn_with_the_realized_sigma_and_the_fix(bf16_policy):
    model, _ = bf16_policy
    lost = r"bfloat16.*sigma=0\.0005.*realized sigma is 0 .*keep_norms_float32"
    with pytest.warns(RuntimeWarning, match=lost), noisy_norms(model, 5e-4, seed=0) as applied:
        pass
    assert applied.realized.metrics() == {"noise/realized_sigma": 0.0, "noise/moved_fraction": 0.0, "noise/row_sigma": 0.0}
    with noisy_norms(model, 1e-2, seed=0) as applied:  # large noise: bf16 keeps most of it, still rounded
        assert 0.6 < applied.realized.moved < 0.85


def test_float32_norms_hold_every_sigma_and_restore_bit_exactly(bf16_policy):
    model, _ = bf16_policy
    assert keep_norms_float32(model) == 4 and keep_norms_float32(model) == 0  # idempotent
    assert all(w.dtype == torch.float32 for w in norm_weights(model))
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16 and model.model.norm.weight.dtype == torch.bfloat16
    clean = [w.detach().clone() for w in norm_weights(model)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot hold" warning
        for sigma in SIGMAS:
            with noisy_norms(model, sigma, seed=7) as applied:
                assert_held(applied.realized.metrics(), sigma)
                assert applied.realized.rounding < 1e-3 * sigma
    assert all(torch.equal(w, c) for w, c in zip(norm_weights(model), clean))


def test_float32_norms_leave_the_clean_model_unchanged_and_carry_the_noise_into_the_logits(bf16_policy):
    model, _ = bf16_policy
    ids = torch.arange(3, 40).view(1, -1)
    with torch.no_grad():
        before = model(ids).logits
        wide = copy.deepcopy(model)
        keep_norms_float32(wide)
        after = wide(ids).logits
        assert after.dtype == torch.bfloat16 and torch.allclose(before, after, atol=3e-2)  # one rounding apart
        with noisy_norms(model, 1e-4, seed=1):  # bf16 norms: the noise is gone
            assert torch.equal(model(ids).logits, before)
        with noisy_norms(wide, 1e-4, seed=1):
            noisy = wide(ids).logits
        assert (noisy - after).abs().max() > 0  # 1e-4 of noise moves the bf16 logits
        assert torch.equal(wide(ids).logits, after)  # and is gone after the block


@pytest.mark.parametrize("fast", [False, True])
def test_hf_backend_reports_the_noise_its_engine_multiplies_by(bf16_policy, fast):
    model, tok = bf16_policy
    keep_norms_float32(model)
    hf = HF(fast=fast)
    hf.setup(model, tok)
    ids = [tok.encode(p) for p in PROMPTS]
    cfg = SamplingConfig(n=2, temperature=0.0, max_new_tokens=6)
    clean = hf.generate(ids, cfg)
    for sigma in SIGMAS:
        with hf.noise(sigma, seed=11):
            hf.generate(ids, cfg)
        assert_held(hf.noise_metrics, sigma)
    if fast:
        scales = hf._fast_engine.norm_scales()
        assert len(scales) == 4 and all(s.dtype == torch.float32 for _, s in scales)
        with hf.noise(1e-2, seed=2) as _, noisy_norms(model, 0.0):  # the engine reads the policy's weights
            noisy = hf.generate(ids, cfg)
            slow = HF(fast=False)
            slow.setup(model, tok)
            ref = slow.generate(ids, cfg)
        assert torch.equal(noisy.completion_ids, ref.completion_ids)
        assert torch.allclose(noisy.logprobs, ref.logprobs, atol=2e-2)
    assert torch.equal(hf.generate(ids, cfg).completion_ids, clean.completion_ids)


def test_measure_noise_compares_what_an_engine_uses_against_the_draw():
    clean = torch.ones(1000)
    z = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 1e-3
    held = measure_noise([(clean + z, clean, z)])
    lost = measure_noise([((clean + z).bfloat16(), clean, z)])
    assert abs(held.sigma / 1e-3 - 1) < 0.1 and held.moved == 1.0 and held.rounding < 1e-6
    assert lost.moved < 0.1 and lost.rounding > 0.5e-3 and lost.dtype == "bfloat16"


def test_a_model_without_the_targeted_norms_keeps_the_clear_error():
    with pytest.raises(ValueError, match="unknown norm name.*Norm layers this model has"):
        keep_norms_float32(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)), DEFAULT_TARGETS)


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
def test_gpu_fast_engine_graphs_hold_the_noise_of_every_sigma():
    from qerl.lora.apply import apply_lora
    from qerl.models.logprobs import completion_logprobs
    from qerl.models.random_init import RandomInit
    from qerl.quantizers import NVFP4

    model, tok = RandomInit("tiny", overrides={"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
                                               "num_key_value_heads": 2}).load(quantizer=NVFP4(), device="cuda")
    model = apply_lora(model, rank=8, alpha=16.0).to(torch.bfloat16)
    keep_norms_float32(model)
    hf = HF(fast=True)
    hf.setup(model, tok)
    ids = [[5 + i, 17, 33 + 2 * i, 9] for i in range(4)]
    cfg = SamplingConfig(n=2, temperature=0.0, max_new_tokens=24)
    clean = hf.generate(ids, cfg)
    for sigma in SIGMAS:
        with hf.noise(sigma, seed=5):
            noisy = hf.generate(ids, cfg)
            ref = completion_logprobs(model, noisy.prompt_ids, noisy.prompt_mask, noisy.completion_ids,
                                      noisy.completion_mask).logprobs
        assert_held(hf.noise_metrics, sigma)
        m = noisy.completion_mask.bool()
        assert (noisy.logprobs[m] - ref[m]).abs().max() < 0.05  # graphs read the float32 noisy weights
    assert hf._fast_engine.runner.replays > 0
    assert torch.equal(hf.generate(ids, cfg).completion_ids, clean.completion_ids)


def test_a_bf16_run_at_sigma_5e_4_logs_the_realized_sigma(tmp_path):
    """Done-when of issue #20: a bfloat16 training run at constant sigma 5e-4 writes noise/realized_sigma
    within 10% of 5e-4 (read back from the TensorBoard event file) and noise/moved_fraction > 0.99."""
    import sys
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from rl_helpers import tiny_data, tiny_module, tiny_trainer

    from qerl.models import RandomInit
    from qerl.noise import Constant

    module = tiny_module(policy=RandomInit(config=WIDE, seed=0), noise=Constant(sigma=5e-4), dtype="bfloat16",
                         log_samples_every=0)
    trainer = tiny_trainer(tmp_path, 2)
    trainer.fit(module, tiny_data())
    assert all(w.dtype == torch.float32 for w in norm_weights(module.model))
    events = EventAccumulator(trainer.log_dir).Reload()
    sigma = [e.value for e in events.Scalars("noise/realized_sigma")]
    moved = [e.value for e in events.Scalars("noise/moved_fraction")]
    assert len(sigma) == 2 and len(moved) == 2
    assert all(abs(s / 5e-4 - 1) < 0.1 for s in sigma) and all(m > 0.99 for m in moved), (sigma, moved)


def test_noise_on_a_policy_without_the_targeted_norms_stops_at_setup_naming_the_key():
    from qerl.noise import Constant
    from qerl.training.checks import RecipeError
    from qerl.training.policy import build_policy

    class NoNorms:
        last_report = None  # as a PolicyLoader before its first load

        def load(self, **kwargs):
            return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)), None

    assert Constant(sigma=5e-4).sigma == 5e-4
    with pytest.raises(RecipeError, match=r"`model.init_args.noise` is set.*unknown norm name.*Norm layers this "
                                          r"model has: 1"):
        build_policy(NoNorms(), None, None, "bfloat16", "cpu", False, noise=True)
