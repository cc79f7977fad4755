"""The fast rollout engine (`HF(fast=True)`): same outputs as the slow path, exact sampling, LoRA and AQN noise
reaching it, bucketed batching; on GPU, CUDA-graph replay equal to eager and updates reaching the graph."""
from __future__ import annotations

import copy

import pytest
import torch

from qerl.models.byte_tokenizer import byte_tokenizer
from qerl.models.logprobs import completion_logprobs
from qerl.rollout import HF
from qerl.rollout.fast import FastPathError, batch_buckets
from qerl.types import SamplingConfig

PROMPTS = ["What is 2 + 3?", "Hi", "A longer prompt than the others, to make left padding matter."]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def policy(tiny_llama):
    tok = byte_tokenizer()
    model = tiny_llama(seed=1, vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       max_position_embeddings=512)
    return model, tok


def make(model, tok, fast, **kwargs) -> HF:
    hf = HF(fast=fast, **kwargs)
    hf.setup(model, tok)
    return hf


def assert_same(slow, fast, atol=1e-4):
    assert torch.equal(slow.completion_ids, fast.completion_ids)
    assert torch.equal(slow.completion_mask, fast.completion_mask)
    assert torch.equal(slow.truncated, fast.truncated)
    assert torch.equal(slow.prompt_ids, fast.prompt_ids)
    assert slow.texts == fast.texts
    assert torch.allclose(slow.logprobs, fast.logprobs, atol=atol, rtol=0)


def teacher_forced(model, r, temperature=1.0):
    return completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                               temperature=temperature).logprobs


def test_greedy_equals_slow_path(policy):
    model, tok = policy
    ids = [tok.encode(p) for p in PROMPTS]
    cfg = SamplingConfig(n=2, temperature=0.0, max_new_tokens=40)
    assert_same(make(model, tok, False).generate(ids, cfg), make(model, tok, True).generate(ids, cfg))


def test_stop_strings_and_bucket_shrink_equal_slow_path(policy):
    """Rows end at different steps (stop strings), live rows move to smaller buckets; outputs stay identical."""
    model, tok = policy
    ids = [tok.encode(p) for p in PROMPTS]
    cfg = SamplingConfig(n=3, temperature=0.0, max_new_tokens=30, stop=["J", ":"])
    slow = make(model, tok, False).generate(ids, cfg)
    hf = make(model, tok, True)
    hf._generate_rows(ids[:1], SamplingConfig(n=1, max_new_tokens=1), None, torch.device("cpu"))  # build engine
    hf._fast_engine.check_every = 3
    fast = hf.generate(ids, cfg)
    assert_same(slow, fast)
    lengths = sorted(set(slow.lengths.tolist()))
    assert len(lengths) >= 2 and slow.truncated.any() and not slow.truncated.all()  # the case is non-trivial


def test_sampled_logprobs_match_teacher_forcing_with_eos_and_buckets(policy):
    """Sampling (temperature 0.7, top-p 0.9) with EOS made likely: rows end early at random, buckets shrink;
    each returned log-prob equals the policy's processed log-prob of that token recomputed from scratch."""
    model, tok = policy
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] *= 6.0
    ids = [tok.encode(p) for p in PROMPTS]
    hf = make(model, tok, True, max_batch_rows=16)
    hf._generate_rows(ids[:1], SamplingConfig(n=1, max_new_tokens=1), None, torch.device("cpu"))
    hf._fast_engine.check_every = 2
    r = hf.generate(ids, SamplingConfig(n=6, temperature=1.0, top_p=1.0, max_new_tokens=24, seed=3))
    assert len(set(r.lengths.tolist())) >= 3 and not r.truncated.all()
    ends = r.completion_ids[torch.arange(r.num_rows), r.lengths - 1]
    assert torch.equal(ends[~r.truncated], torch.full_like(ends[~r.truncated], tok.eos_token_id))
    ref = teacher_forced(model, r)
    m = r.completion_mask.bool()
    assert torch.allclose(r.logprobs[m], ref[m], atol=1e-4)
    assert (r.logprobs[~m] == 0).all()
    again = hf.generate(ids, SamplingConfig(n=6, temperature=1.0, top_p=1.0, max_new_tokens=24, seed=3))
    assert torch.equal(again.completion_ids, r.completion_ids)  # seeded: reproducible


def test_gumbel_sampling_matches_the_processed_distribution(policy):
    """First tokens of 3000 rows of one prompt: frequencies follow exp(processed log-probs); top-p cuts the tail."""
    model, tok = policy
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # a peaked distribution: a few dozen likely tokens
    hf = make(model, tok, True, max_batch_rows=3000)
    prompt = [tok.encode("Hi")]
    r = hf.generate(prompt, SamplingConfig(n=3000, temperature=1.5, top_p=0.8, max_new_tokens=1, seed=0))
    logits = model(torch.tensor(prompt)).logits[0, -1]
    from qerl.rollout.sampling import processed_logprobs

    probs = processed_logprobs(logits[None], 1.5, 0.8)[0].exp()
    counts = torch.bincount(r.completion_ids[:, 0], minlength=probs.numel()).double()
    assert counts[probs == 0].sum() == 0
    expected = probs.double() * 3000
    keep = expected > 20
    z = (counts[keep] - expected[keep]) / expected[keep].sqrt()
    assert z.abs().max() < 4.5 and keep.sum() >= 5
    assert torch.allclose(r.logprobs[:, 0], probs.log()[r.completion_ids[:, 0]].float(), atol=1e-5)


def test_lora_update_and_aqn_noise_reach_the_engine(policy):
    """One engine (state reused across calls): after a LoRA update, and inside AQN noise, its log-probs follow
    the changed model (teacher forcing), and differ from before."""
    from qerl.lora.apply import apply_lora

    model, tok = policy
    peft_model = apply_lora(copy.deepcopy(model), rank=4, alpha=8.0)
    hf = make(peft_model, tok, True)
    ids = [tok.encode(p) for p in PROMPTS]
    cfg = SamplingConfig(n=1, temperature=0.0, max_new_tokens=12)
    before = hf.generate(ids, cfg)
    state = hf._fast_engine.state
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    after = hf.generate(ids, cfg)
    assert hf._fast_engine.state is state  # no re-allocation: the update was read in place
    assert not torch.equal(before.logprobs, after.logprobs)
    assert torch.allclose(after.logprobs, teacher_forced(peft_model, after, 1.0).where(after.completion_mask.bool(),
                                                                                        torch.zeros(())), atol=1e-4)
    with hf.noise(0.5, seed=1):
        noisy = hf.generate(ids, cfg)
        ref = teacher_forced(peft_model, noisy)
    assert not torch.equal(noisy.logprobs, after.logprobs)
    m = noisy.completion_mask.bool()
    assert torch.allclose(noisy.logprobs[m], ref[m], atol=1e-4)
    assert_same(make(peft_model, tok, False).generate(ids, cfg), hf.generate(ids, cfg))  # noise restored


def test_buckets_and_unsupported_models():
    assert batch_buckets(1) == [1] and batch_buckets(6) == [1, 2, 4, 6] and batch_buckets(8) == [1, 2, 4, 8]
    with pytest.raises(FastPathError, match="fast=False"):
        from qerl.rollout.fast import decoder_layout

        decoder_layout(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_smollm2_greedy_equals_slow_path(smollm2):
    model, tok = smollm2
    chats = [[{"role": "user", "content": q}] for q in ("What is 12 + 35?", "Name a colour.")]
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    cfg = SamplingConfig(n=1, temperature=0.0, max_new_tokens=16)
    slow, fast = make(model, tok, False).generate(ids, cfg), make(model, tok, True).generate(ids, cfg)
    assert_same(slow, fast, atol=2e-3)


# ------------------------------------------------------------------------------------------------ GPU
def _gpu_policy(quantizer, lora: bool):
    from qerl.lora.apply import apply_lora
    from qerl.models.random_init import RandomInit

    model, tok = RandomInit("tiny", overrides={"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
                                                   "num_key_value_heads": 2}).load(quantizer=quantizer, device="cuda")
    if lora:
        model = apply_lora(model, rank=8, alpha=16.0).to(torch.bfloat16)
    return model, tok


@pytest.mark.gpu
@pytest.mark.parametrize("quantizer", [None, "NVFP4"])
def test_gpu_graph_replay_equals_eager_and_updates_reach_graph(quantizer):
    model, tok = _gpu_policy(quantizer, lora=True)
    ids = [[5 + i, 17, 33 + 2 * i, 9][: 2 + i % 3] for i in range(5)]
    cfg = SamplingConfig(n=2, temperature=0.0, max_new_tokens=40)

    def both():
        graphed, eager = make(model, tok, True), make(model, tok, True)
        g = graphed.generate(ids, cfg)
        eager._generate_rows(ids[:1], SamplingConfig(n=1, max_new_tokens=1), None, torch.device("cuda"))
        eager._fast_engine.use_graphs = False
        eager._fast_engine.release()
        return graphed, g, eager.generate(ids, cfg)

    hf, g, e = both()
    assert hf._fast_engine.runner.replays > 0
    assert torch.equal(g.completion_ids, e.completion_ids)
    assert torch.allclose(g.logprobs, e.logprobs, atol=1e-3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    replays = hf._fast_engine.runner.replays
    g2 = hf.generate(ids, cfg)
    assert hf._fast_engine.runner.replays > replays and not torch.allclose(g2.logprobs, g.logprobs)
    ref = teacher_forced(model, g2)
    m = g2.completion_mask.bool()
    assert (g2.logprobs[m] - ref[m]).abs().max() < 0.05
    with hf.noise(0.3, seed=0):
        noisy = hf.generate(ids, cfg)
        ref = teacher_forced(model, noisy)
    m = noisy.completion_mask.bool()
    assert not torch.allclose(noisy.logprobs, g2.logprobs) and (noisy.logprobs[m] - ref[m]).abs().max() < 0.05


def test_qwen2_nvfp4_lora_greedy_equals_slow_path():
    """Qwen2 shape (q/k/v bias), 4-bit QuantLinear base and an active LoRA: the engine's own LoRA/norm/rope
    blocks compute what the peft and HF modules compute."""
    from qerl.lora.apply import apply_lora
    from qerl.models.random_init import RandomInit

    model, tok = RandomInit("tiny", tokenizer="bytes").load(quantizer="NVFP4", dtype=torch.float32)
    model = apply_lora(model, rank=4, alpha=8.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    ids = [tok.encode(p) for p in PROMPTS]
    cfg = SamplingConfig(n=2, temperature=0.0, max_new_tokens=20)
    assert_same(make(model, tok, False).generate(ids, cfg), make(model, tok, True).generate(ids, cfg))
