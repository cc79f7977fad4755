"""Relative AQN (issue #33): Z = sigma * |w| * N(0, 1), so every row gets (1 + Z/w) of spread sigma in any model.

Checked on tiny random-init models with small norm scales (SmolLM2's first-layer norms have a median |w| of
0.022): the relative Z is the absolute Z of the same seed times |w|, the rows' factor has spread sigma and
`noise/row_sigma` says so, restore stays bit-exact, every registered schedule takes `relative`, the callback
publishes it, the HF backend (slow and fast path) applies the same Z, and a training step logs `noise/row_sigma`.
"""
from __future__ import annotations

import copy

import pytest
import torch
from rl_helpers import MetricsRecorder, tiny_data, tiny_module, tiny_trainer

from qerl.noise import Exponential, noisy_norms
from qerl.noise.base import NoiseDraw
from qerl.registry import NOISE_SCHEDULERS

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def small_norms(make_llama):
    """The tiny Llama with norm scales of SmolLM2's first layer: |w| drawn from U(0.01, 0.04), a third negative."""
    model = make_llama(random_norms=False)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight"):
                sign = torch.where(torch.rand(param.shape, generator=generator) < 0.33, -1.0, 1.0)
                param.copy_(sign * (0.01 + 0.03 * torch.rand(param.shape, generator=generator)))
    return model


def test_relative_z_is_the_absolute_z_of_the_seed_times_abs_w(small_norms):
    with noisy_norms(small_norms, 0.05, seed=3) as absolute:
        pass
    with noisy_norms(small_norms, 0.05, seed=3, relative=True) as relative:
        pass
    assert sorted(relative) == sorted(absolute)
    for name, z in relative.items():
        w = small_norms.get_submodule(name).weight.detach()
        assert torch.equal(z, absolute[name] * w.abs())


def test_rows_get_spread_sigma_relative_and_sigma_over_w_absolute(small_norms):
    sigma = 0.05
    with noisy_norms(small_norms, sigma, seed=0, relative=True) as relative:
        factors = torch.cat([small_norms.get_submodule(n).weight.detach() / clean_weight(relative, small_norms, n)
                             for n in relative])
    assert (factors - 1).std().item() == pytest.approx(sigma, rel=0.15)  # 256 channels
    assert relative.realized.row_sigma == pytest.approx((factors - 1).std(correction=0).item(), rel=1e-6)
    assert relative.realized.sigma < sigma * 0.04  # the weights moved by sigma * |w|, |w| <= 0.04
    with noisy_norms(small_norms, sigma, seed=0) as absolute:
        pass
    assert absolute.realized.sigma == pytest.approx(sigma, rel=0.15)
    assert absolute.realized.row_sigma > 40 * sigma  # the same sigma is > 100% noise on rows of |w| ~ 0.02
    metrics = relative.realized.metrics()
    assert set(metrics) == {"noise/realized_sigma", "noise/moved_fraction", "noise/row_sigma"}
    assert metrics["noise/moved_fraction"] == 1.0


def clean_weight(applied, model, name):
    """The clean copy `noisy_norms` saved for norm `name`."""
    return applied.clean[id(model.get_submodule(name).weight)][0]


def test_relative_restores_bit_exactly_and_zero_weights_get_no_noise(small_norms, tokens, snapshot_of, changed_since):
    norm = small_norms.get_submodule("model.layers.0.input_layernorm")
    with torch.no_grad():
        norm.weight[:8] = 0.0
    before = snapshot_of(small_norms)
    with torch.no_grad():
        clean = small_norms(tokens).logits
    with noisy_norms(small_norms, 0.1, seed=1, relative=True) as applied:
        assert torch.equal(norm.weight[:8], torch.zeros(8))  # w = 0: nothing to scale, no noise
        assert changed_since(small_norms, before)
        with torch.no_grad():
            assert not torch.equal(small_norms(tokens).logits, clean)
    assert changed_since(small_norms, before) == []
    assert applied.realized.row_sigma == pytest.approx(0.1, rel=0.2)  # the 8 zero channels are left out


@pytest.mark.parametrize("name", sorted(NOISE_SCHEDULERS.names()))
def test_every_schedule_takes_relative_as_a_keyword(name):
    cls = NOISE_SCHEDULERS.get(name)
    assert cls().relative is False and cls(relative=True).relative is True
    with pytest.raises(TypeError, match=rf"{cls.__name__}: relative='yes' is not a boolean"):
        cls(relative="yes")


def test_positional_arguments_keep_their_meaning():
    schedule = Exponential(2e-2, 1e-3, 5, relative=True)
    assert (schedule.sigma_start, schedule.sigma_end, schedule.num_stages, schedule.relative) == (2e-2, 1e-3, 5, True)
    assert schedule.sigma_at(1, 5) == 2e-2


def test_bad_relative_to_noisy_norms_names_it(small_norms):
    with pytest.raises(TypeError, match="noisy_norms: relative=1 is not a boolean"), \
            noisy_norms(small_norms, 0.1, relative=1):
        pass


def test_bf16_norms_warn_against_the_drawn_relative_noise(small_norms):
    model = copy.deepcopy(small_norms).to(torch.bfloat16)
    with pytest.warns(RuntimeWarning, match="cannot hold relative noise of sigma=0.0001"), \
            noisy_norms(model, 1e-4, seed=0, relative=True) as applied:
        pass
    assert applied.realized.moved < 0.2
    with noisy_norms(copy.deepcopy(small_norms), 1e-4, seed=0, relative=True) as held:  # float32: held, no warning
        pass
    assert held.realized.row_sigma == pytest.approx(1e-4, rel=0.15)


@pytest.mark.parametrize("fast", [False, True])
def test_hf_backend_applies_the_same_relative_z_and_logs_row_sigma(small_norms, fast):
    from qerl.models.byte_tokenizer import byte_tokenizer
    from qerl.rollout import HF
    from qerl.types import SamplingConfig

    tok = byte_tokenizer()
    model = small_norms
    model.resize_token_embeddings(len(tok))
    hf = HF(fast=fast)
    hf.setup(model, tok)
    ids = [tok.encode("What is 2 + 3?")]
    cfg = SamplingConfig(n=2, temperature=0.0, max_new_tokens=8)
    clean = hf.generate(ids, cfg)
    state = hf._fast_engine.state if fast else None
    with hf.noise(0.2, seed=5, relative=True):
        noisy = hf.generate(ids, cfg)
        metrics = dict(hf.noise_metrics)
    if fast:  # noise is written in place: the engine keeps its buffers (and, on a GPU, its captured graphs)
        assert hf._fast_engine.state is state
    reference = copy.deepcopy(model)
    with noisy_norms(reference, 0.2, seed=5, relative=True):
        expected = HF(fast=False)
        expected.setup(reference, tok)
        want = expected.generate(ids, cfg)
    assert torch.equal(noisy.completion_ids, want.completion_ids)
    assert torch.allclose(noisy.logprobs, want.logprobs, atol=1e-4)
    assert not torch.allclose(noisy.logprobs, clean.logprobs, atol=1e-4)
    assert metrics["noise/row_sigma"] == pytest.approx(0.2, rel=0.15)
    assert metrics["noise/realized_sigma"] < 0.2 * 0.04
    assert torch.equal(hf.generate(ids, cfg).logprobs, clean.logprobs)  # restored


def test_callback_publishes_relative_and_a_training_step_logs_row_sigma(tmp_path):
    module = tiny_module(noise=Exponential(sigma_start=1e-2, sigma_end=1e-3, num_stages=2, relative=True))
    recorder = MetricsRecorder()
    tiny_trainer(tmp_path, 2, callbacks=[recorder]).fit(module, tiny_data())
    assert module.noise_draw.relative is True and module.noise_draw.sigma > 0
    first, last = recorder.steps
    assert first["noise/sigma"] == 0 and first["noise/row_sigma"] == 0 and first["noise/realized_sigma"] == 0
    assert last["noise/row_sigma"] == pytest.approx(1e-2, rel=0.25)  # tiny model: few hundred channels
    assert last["noise/realized_sigma"] > 0
    assert NoiseDraw().relative is False
