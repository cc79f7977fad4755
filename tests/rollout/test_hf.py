"""The HF rollout backend: shapes and masks, seeding, sampling log-probs, greedy parity with HF, stops, EOS, AQN."""
from __future__ import annotations

import pytest
import torch

from qerl.models.byte_tokenizer import byte_tokenizer
from qerl.models.logprobs import completion_logprobs
from qerl.rollout import HF
from qerl.rollout.sampling import processed_logprobs, sample_next
from qerl.types import SamplingConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def policy(tiny_llama):
    tok = byte_tokenizer()
    model = tiny_llama(seed=1, vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return model, tok


def backend(model, tok, **kwargs) -> HF:
    hf = HF(**kwargs)
    hf.setup(model, tok)
    return hf


PROMPTS = ["What is 2 + 3?", "Hi", "A longer prompt than the others, to make left padding matter."]


def encode(tok, prompts=PROMPTS):
    return [tok.encode(p) for p in prompts]


def test_rollout_shapes_masks_and_groups(policy):
    model, tok = policy
    r = backend(model, tok).generate(encode(tok), SamplingConfig(n=3, max_new_tokens=6, seed=0))
    assert r.num_rows == 9 and r.group_size == 3
    assert r.group_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert r.prompt_ids.shape == (9, max(len(p) for p in encode(tok)))
    assert r.completion_ids.shape[0] == 9 and r.completion_ids.shape[1] <= 6
    # prompts left-padded: the real tokens of row 3 (prompt "Hi") are its last 2 columns
    assert r.prompt_mask[3].tolist()[-2:] == [1, 1] and r.prompt_mask[3].sum() == 2
    assert r.prompt_ids[3, -2:].tolist() == tok.encode("Hi")
    # completion mask is a prefix of ones; logprobs are <= 0 on it and 0 elsewhere
    for row in range(9):
        m = r.completion_mask[row]
        assert torch.equal(m, (torch.arange(m.numel()) < m.sum()).long())
    assert (r.logprobs[r.completion_mask.bool()] <= 0).all()
    assert (r.logprobs[~r.completion_mask.bool()] == 0).all()
    assert len(r.texts) == 9 and r.truncated.dtype == torch.bool
    assert torch.equal(r.truncated, r.lengths == 6)


def test_same_seed_same_rollout_other_seed_differs(policy):
    model, tok = policy
    hf = backend(model, tok)
    a = hf.generate(encode(tok), SamplingConfig(n=2, max_new_tokens=8, seed=7))
    b = hf.generate(encode(tok), SamplingConfig(n=2, max_new_tokens=8, seed=7))
    c = hf.generate(encode(tok), SamplingConfig(n=2, max_new_tokens=8, seed=8))
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.completion_ids, c.completion_ids)
    assert model.training is False  # mode restored


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_match_training_logprobs(policy, temperature):
    model, tok = policy
    r = backend(model, tok).generate(encode(tok), SamplingConfig(n=2, max_new_tokens=8, temperature=temperature, seed=3))
    lp = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                             temperature=temperature).logprobs
    mask = r.completion_mask.bool()
    assert (lp[mask] - r.logprobs[mask]).abs().max() < 1e-4


def test_greedy_matches_hf_generate_across_batch_splits(policy):
    model, tok = policy
    prompts = encode(tok)
    greedy = SamplingConfig(n=1, max_new_tokens=7, temperature=0.0)
    whole = backend(model, tok, max_batch_rows=64).generate(prompts, greedy)
    split = backend(model, tok, max_batch_rows=1).generate(prompts, greedy)
    assert torch.equal(whole.completion_ids[:, : split.completion_ids.shape[1]], split.completion_ids)
    for i, p in enumerate(prompts):  # each prompt alone through transformers' own generate
        out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             do_sample=False, max_new_tokens=7, pad_token_id=tok.pad_token_id)
        ours = whole.completion_ids[i][whole.completion_mask[i].bool()]
        assert out[0, len(p):].tolist()[: ours.numel()] == ours.tolist()


def test_stop_string_ends_the_completion_and_is_kept(policy):
    model, tok = policy
    greedy = SamplingConfig(n=1, max_new_tokens=12, temperature=0.0)
    free = backend(model, tok).generate([tok.encode("Hi")], greedy)
    ids = free.completion_ids[0][free.completion_mask[0].bool()].tolist()
    stop = tok.decode(ids[4:6])  # two tokens in the middle of the greedy completion
    first = tok.decode(ids).find(stop)
    stopped = backend(model, tok).generate([tok.encode("Hi")], SamplingConfig(n=1, max_new_tokens=12, temperature=0.0,
                                                                                stop=[stop]))
    assert stopped.texts[0] == tok.decode(ids)[: first + len(stop)]
    assert not bool(stopped.truncated[0]) and int(stopped.lengths[0]) <= 6


def test_eos_ends_row_and_masks_the_rest(policy):
    model, tok = policy
    greedy = SamplingConfig(n=1, max_new_tokens=10, temperature=0.0)
    free = backend(model, tok).generate([tok.encode("Hi")], greedy)
    third = int(free.completion_ids[0, 2])
    model.generation_config.eos_token_id = [tok.eos_token_id, third]  # the 3rd greedy token now ends the row
    try:
        r = backend(model, tok).generate([tok.encode("Hi")], greedy)
    finally:
        model.generation_config.eos_token_id = tok.eos_token_id
    first_hit = free.completion_ids[0].tolist().index(third)
    assert int(r.lengths[0]) == first_hit + 1  # EOS included in the mask
    assert not bool(r.truncated[0])


def test_aqn_noise_reaches_generation_and_is_removed(policy):
    model, tok = policy
    hf = backend(model, tok)
    cfg = SamplingConfig(n=2, max_new_tokens=6, seed=5)
    clean = hf.generate(encode(tok), cfg)
    norms = {k: v.clone() for k, v in model.state_dict().items() if "norm" in k}
    with hf.noise(0.5, seed=1):
        noisy = hf.generate(encode(tok), cfg)
    again = hf.generate(encode(tok), cfg)
    assert not torch.equal(clean.logprobs, noisy.logprobs)
    assert torch.equal(clean.completion_ids, again.completion_ids) and torch.equal(clean.logprobs, again.logprobs)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in norms.items())


def test_top_p_keeps_the_nucleus_only():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    lp = processed_logprobs(logits, temperature=1.0, top_p=0.7)
    assert torch.isinf(lp[0, 2:]).all() and torch.allclose(lp[0, :2].exp(), torch.tensor([0.625, 0.375]))
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.0, 0.7, gen)[0] for _ in range(200)])
    assert set(draws.flatten().tolist()) == {0, 1}
    tok, logp = sample_next(logits, 0.0, 1.0)
    assert tok.item() == 0 and torch.allclose(logp, torch.log(torch.tensor([0.5])))
    scaled = processed_logprobs(logits, temperature=0.5, top_p=1.0).exp()
    assert torch.allclose(scaled, torch.softmax(logits / 0.5, -1))


def test_bad_arguments_are_refused(policy):
    with pytest.raises(ValueError, match="max_batch_rows"):
        HF(max_batch_rows=0)
    model, tok = policy
    with pytest.raises(ValueError, match="at least one token"):
        backend(model, tok).generate([[]], SamplingConfig(n=2, max_new_tokens=2))
