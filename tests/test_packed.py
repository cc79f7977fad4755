"""`PackedGroups`: one prompt per micro-batch, completions packed without padding - the same log-probs, entropies and
gradients as the padded rows, on fewer positions."""
from __future__ import annotations

import pytest
import torch

from qerl.algorithms import DAPO, GRPO
from qerl.models.byte_tokenizer import byte_tokenizer
from qerl.models.logprobs import PaddedRows, stored_logprobs
from qerl.models.packed import PackedGroups, block_mask
from qerl.rollout import HF
from qerl.training.update import TrainBatch, accumulate_gradients
from qerl.types import SamplingConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def ragged_rollout(tiny_llama, attn="sdpa", lora=False, device="cpu"):
    """3 prompts of different lengths x 4 completions cut to ragged lengths (1 to 12 tokens), as EOS would."""
    tok = byte_tokenizer()
    model = tiny_llama(seed=2, vocab_size=len(tok), eos_token_id=tok.eos_token_id, attn_implementation=attn).to(device)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                                                 init_lora_weights=False))
    hf = HF()
    hf.setup(model, tok)
    prompts = [tok.encode(p) for p in ("1+1=", "A much longer prompt here", "xyz")]
    rollout = hf.generate(prompts, SamplingConfig(n=4, max_new_tokens=12, temperature=1.0, seed=3))
    lengths = torch.tensor([12, 3, 7, 1, 5, 12, 2, 9, 4, 4, 11, 6], device=device)
    rollout.completion_mask = (torch.arange(12, device=device).unsqueeze(0) < lengths.unsqueeze(1)).to(
        rollout.completion_mask.dtype)
    return model, rollout


def test_block_mask_lets_a_completion_see_the_prompt_and_itself_only():
    additive = block_mask(2, [2, 1], "cpu", torch.bfloat16)
    assert additive.shape == (1, 1, 5, 5) and additive.dtype == torch.bfloat16
    assert (additive[0, 0] == 0).tolist() == [
        [True, False, False, False, False],   # prompt: causal
        [True, True, False, False, False],
        [True, True, True, False, False],     # completion 1
        [True, True, True, True, False],
        [True, True, False, False, True],     # completion 2: the prompt and itself, not completion 1
    ]
    assert additive.min() == torch.finfo(torch.bfloat16).min
    assert additive.stride(2) % 8 == 0, "rows aligned: SDPA's memory-efficient kernel would copy the mask otherwise"


def test_micro_batches_stay_inside_a_group_and_count_one_prompt_each(tiny_llama):
    _, r = ragged_rollout(tiny_llama)
    layout = PackedGroups()
    batches = [rows.tolist() for rows in layout.batches(r, 3)]
    assert batches == [[0, 1, 2], [3], [4, 5, 6], [7], [8, 9, 10], [11]]
    prompts, lengths = r.prompt_mask.sum(1), r.completion_mask.sum(1)
    assert layout.positions(r, 4) == int(prompts[::4].sum() + lengths.sum())
    assert layout.positions(r, 4) < PaddedRows().positions(r, 4)  # the padded rows repeat prompts and pad


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logprobs_and_entropy_equal_the_padded_rows(tiny_llama, attn):
    model, r = ragged_rollout(tiny_llama, attn=attn)
    lengths = r.completion_mask.sum(1)
    assert len(set(lengths.tolist())) > 2, "the rollout should be ragged"
    padded, packed = PaddedRows(), PackedGroups(logits_budget=700)  # a few positions per head chunk
    for rows in packed.batches(r, 4):
        a = padded.logprobs(model, r, rows, 0.8, with_entropy=True)
        b = packed.logprobs(model, r, rows, 0.8, with_entropy=True)
        assert a.logprobs.shape == b.logprobs.shape
        mask = r.completion_mask[rows, : a.logprobs.shape[1]].bool()
        assert torch.allclose(a.logprobs[mask], b.logprobs[mask], atol=1e-5)
        assert torch.allclose(a.entropy[mask], b.entropy[mask], atol=1e-4)
        assert torch.all(b.logprobs[~mask] == 0)
    keep = r.completion_mask.bool()  # the padded rows leave meaningless values past each completion
    assert torch.allclose(stored_logprobs(model, r, 4, 1.0)[keep], stored_logprobs(model, r, 4, 1.0, layout=packed)[keep],
                          atol=1e-5)


def test_an_sdpa_policy_attends_segment_by_segment_with_no_mask(tiny_llama, monkeypatch):
    """sdpa -> `qerl_packed`: per layer one causal call for the prompt and one per completion against [prompt | itself]
    (lower-right causal), no (L x L) mask; a padded forward afterwards still runs HF's sdpa with its own mask."""
    from torch.nn.attention.bias import CausalBias

    from qerl.models import segment_attention

    model, r = ragged_rollout(tiny_llama)
    calls = []
    real = segment_attention._sdpa

    def spy(q, k, v, **kw):
        calls.append((q.shape[2], k.shape[2], type(kw.get("attn_mask")).__name__, kw.get("is_causal", False)))
        return real(q, k, v, **kw)

    monkeypatch.setattr(segment_attention, "_sdpa", spy)
    rows = next(iter(PackedGroups().batches(r, 4)))
    prompt_len, lengths = int(r.prompt_mask[rows[0]].sum()), r.completion_mask[rows].sum(1).tolist()
    PackedGroups(segments=True).logprobs(model, r, rows, 1.0)
    assert model.config._attn_implementation == segment_attention.NAME
    per_layer = [(prompt_len, prompt_len, "NoneType", True)] + [(n, prompt_len + n, CausalBias.__name__, False)
                                                                for n in lengths]
    assert calls == per_layer * model.config.num_hidden_layers
    calls.clear()
    padded = PaddedRows().logprobs(model, r, rows, 1.0)  # the fallback: HF's sdpa function, not the segments
    assert not calls and torch.isfinite(padded.logprobs).all()


def test_by_default_a_long_packed_sequence_attends_by_segments_and_a_short_one_through_the_mask(tiny_llama,
                                                                                              monkeypatch):
    from qerl.models import packed, segment_attention

    model, r = ragged_rollout(tiny_llama)
    calls = []
    real = segment_attention._sdpa
    monkeypatch.setattr(segment_attention, "_sdpa", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    rows = next(iter(PackedGroups().batches(r, 4)))
    length = int(r.prompt_mask[rows[0]].sum() + r.completion_mask[rows].sum())
    monkeypatch.setattr(packed, "SEGMENTS_FROM", length)  # not above: the mask
    short = PackedGroups().logprobs(model, r, rows, 1.0).logprobs
    assert not calls
    monkeypatch.setattr(packed, "SEGMENTS_FROM", length - 1)  # above: segments
    long = PackedGroups().logprobs(model, r, rows, 1.0).logprobs
    assert calls and torch.allclose(short, long, atol=1e-5)


def test_batched_segments_attend_in_two_calls_a_layer_and_give_the_same_logprobs(tiny_llama, monkeypatch):
    """`batched=True`: the prompt causally, then every completion at once - rows padded to the longest completion,
    keys [prompt | own keys], one lower-right causal bias; the same log-probs and entropies as one call each."""
    from torch.nn.attention.bias import CausalBias

    from qerl.models import segment_attention

    model, r = ragged_rollout(tiny_llama)
    calls = []
    real = segment_attention._sdpa

    def spy(q, k, v, **kw):
        calls.append((tuple(q.shape[:3]), k.shape[2], type(kw.get("attn_mask")).__name__))
        return real(q, k, v, **kw)

    monkeypatch.setattr(segment_attention, "_sdpa", spy)
    monkeypatch.setattr(segment_attention, "ONE_CALL_WASTE", 100.0)  # these tiny groups pad ~2.6x: take one call
    heads = model.config.num_attention_heads
    for rows in PackedGroups().batches(r, 4):
        prompt_len, lengths = int(r.prompt_mask[rows[0]].sum()), r.completion_mask[rows].sum(1).tolist()
        assert len(set(lengths)) > 1  # ragged: the padding is exercised
        calls.clear()
        one = PackedGroups(segments=True, batched=True).logprobs(model, r, rows, 0.8, with_entropy=True)
        widest = max(lengths)
        assert calls == [((1, heads, prompt_len), prompt_len, "NoneType"),
                         ((len(lengths), heads, widest), prompt_len + widest, CausalBias.__name__)
                         ] * model.config.num_hidden_layers
        each = PackedGroups(segments=True).logprobs(model, r, rows, 0.8, with_entropy=True)
        mask = r.completion_mask[rows, : one.logprobs.shape[1]].bool()
        assert torch.allclose(one.logprobs[mask], each.logprobs[mask], atol=1e-5)
        assert torch.allclose(one.entropy[mask], each.entropy[mask], atol=1e-4)
        assert torch.all(one.logprobs[~mask] == 0)


def test_one_call_is_taken_only_while_the_padding_at_most_doubles_the_scores():
    from qerl.models.segment_attention import worth_one_call

    assert worth_one_call(256, [490] * 8)  # a typical GSM8K group: no padding
    assert worth_one_call(256, [300, 700, 450, 500, 380, 420, 350, 600])  # 8 x 700 x 956 vs 3,700 x 256 + sum n^2
    assert not worth_one_call(256, [4096, 450, 500, 300, 700, 350, 420, 380])  # one at the cap: ~5x the scores
    assert not worth_one_call(256, [0, 0]) and worth_one_call(256, [0, 7])


def test_a_skewed_group_attends_one_call_per_completion_even_when_batched(tiny_llama, monkeypatch):
    from qerl.models import segment_attention

    model, r = ragged_rollout(tiny_llama)
    calls = []
    real = segment_attention._sdpa
    monkeypatch.setattr(segment_attention, "_sdpa", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.setattr(segment_attention, "ONE_CALL_WASTE", 1.0)  # any padding is too much
    rows = next(iter(PackedGroups().batches(r, 4)))
    PackedGroups(segments=True, batched=True).logprobs(model, r, rows, 1.0)
    assert len(calls) == (1 + len(rows)) * model.config.num_hidden_layers


def test_a_zero_length_completion_is_left_out_of_the_batched_call(tiny_llama, monkeypatch):
    from qerl.models import segment_attention

    monkeypatch.setattr(segment_attention, "ONE_CALL_WASTE", 100.0)
    model, r = ragged_rollout(tiny_llama)
    rows = next(iter(PackedGroups().batches(r, 4)))
    r.completion_mask[rows[1]] = 0  # a completion cut to nothing
    one = PackedGroups(segments=True, batched=True).logprobs(model, r, rows, 1.0).logprobs
    each = PackedGroups(segments=True).logprobs(model, r, rows, 1.0).logprobs
    assert torch.equal(one[1], torch.zeros_like(one[1]))
    assert torch.allclose(one, each, atol=1e-5)


def test_segments_and_the_dense_mask_give_the_same_gradients_under_checkpointing(tiny_llama, monkeypatch):
    """Training runs gradient-checkpointed (the layers recompute during backward, the segments travel with them)."""
    from qerl.models import segment_attention

    monkeypatch.setattr(segment_attention, "ONE_CALL_WASTE", 100.0)  # batched: one padded call for every group
    model, r = ragged_rollout(tiny_llama, lora=True)
    causal = model.get_base_model()
    causal.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for layout in (PackedGroups(segments=False), PackedGroups(segments=True),
                   PackedGroups(segments=True, batched=True)):
        model.zero_grad()
        for rows in layout.batches(r, 4):
            lp = layout.logprobs(model, r, rows, 1.0).logprobs
            (lp * r.completion_mask[rows, : lp.shape[1]].float()).sum().backward()
        grads.append([p.grad.clone() for p in trained])
    assert causal.config._attn_implementation == "qerl_packed"
    for other in grads[1:]:  # segments one call each, and all completions in one call
        assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(grads[0], other))
    assert any(float(g.abs().sum()) > 0 for g in grads[2])


@pytest.mark.parametrize("algorithm", [GRPO(), DAPO()], ids=["GRPO", "DAPO"])
def test_packed_update_gives_the_padded_loss_and_lora_gradients(tiny_llama, algorithm):
    model, r = ragged_rollout(tiny_llama, lora=True)
    rewards = torch.arange(r.num_rows, dtype=torch.float32) % 3
    batch = TrainBatch(r, algorithm.advantages(rewards, r.group_size))
    batch.old_logprobs = stored_logprobs(model, r, 4, 1.0) + 0.05  # off-policy, so the ratio is not 1
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)

    def grads(layout, micro):
        model.zero_grad()
        result = accumulate_gradients(model, algorithm, batch, micro, 1.0, lambda loss: loss.backward(),
                                      layout=layout)
        return result, [p.grad.clone() for p in trained]

    base, g_base = grads(PaddedRows(), 4)
    packed, g_packed = grads(PackedGroups(), 3)  # 3 + 1 rows a group: a prompt shared by 3, then by 1
    assert base.finite and packed.finite
    assert packed.metrics["loss"] == pytest.approx(base.metrics["loss"], rel=1e-5, abs=1e-7)
    assert packed.metrics["entropy"] == pytest.approx(base.metrics["entropy"], rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(g_base, g_packed))
    assert max(float(g.abs().max()) for g in g_base) > 1e-4  # the gradients compared are not all zero


def test_an_attention_without_custom_masks_is_refused_with_what_to_change(tiny_llama):
    model, r = ragged_rollout(tiny_llama)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attention implementation .* 'flash_attention_2'.*pack_groups: false"):
        PackedGroups().logprobs(model, r, torch.arange(4), 1.0)


def test_a_module_refuses_a_policy_it_cannot_pack_at_setup_before_any_rollout(monkeypatch):
    from rl_helpers import tiny_module

    import qerl.module

    build = qerl.module.build_policy

    def flash_policy(*args, **kwargs):
        model, tok = build(*args, **kwargs)
        model.get_base_model().config._attn_implementation = "flash_attention_2"
        return model, tok

    monkeypatch.setattr(qerl.module, "build_policy", flash_policy)
    module = tiny_module(pack_groups=True)
    with pytest.raises(ValueError, match="'flash_attention_2'.*model.init_args.pack_groups: false"):
        module.setup("fit")
    assert module.rollout.policy is None  # the engine was never set up


def test_a_micro_batch_across_groups_or_a_holed_mask_is_refused(tiny_llama):
    model, r = ragged_rollout(tiny_llama)
    with pytest.raises(ValueError, match="rows of one group"):
        PackedGroups().logprobs(model, r, torch.tensor([3, 4]), 1.0)
    r.completion_mask[0, 0] = 0
    r.completion_mask[0, 1] = 1
    with pytest.raises(ValueError, match="hole"):
        PackedGroups().logprobs(model, r, torch.arange(4), 1.0)


def test_a_module_with_pack_groups_trains_as_the_padded_one(tmp_path):
    """Two `qerl fit` steps of the tiny NVFP4 + LoRA + AQN module, padded rows vs packed groups: the same adapter."""
    import lightning as L
    from rl_helpers import MetricsRecorder, lora_state, tiny_data, tiny_module, tiny_trainer

    states, logged = [], []
    for pack in (False, True):
        L.seed_everything(0)  # the same LoRA init in both
        module = tiny_module(pack_groups=pack, micro_batch_size=3)
        recorder = MetricsRecorder()
        tiny_trainer(tmp_path / str(pack), 2, callbacks=[recorder]).fit(module, tiny_data())
        assert isinstance(module.layout, PackedGroups if pack else PaddedRows)
        states.append(lora_state(module))
        logged.append(recorder.steps[-1])
    assert states[0].keys() == states[1].keys()
    assert all(torch.allclose(states[0][k], states[1][k], rtol=1e-4, atol=1e-6) for k in states[0])  # 2.5e-7
    assert any(float(v.abs().sum()) > 0 for k, v in states[1].items() if "lora_B" in k)  # training moved B
    assert logged[1]["train/loss"] == pytest.approx(logged[0]["train/loss"], rel=1e-4, abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_packed_logprobs_and_gradients_match_the_padded_rows_through_cuda_sdpa(tiny_llama):
    """On CUDA, sdpa takes the block mask through its masked kernels: the same numbers as the padded rows."""
    model, r = ragged_rollout(tiny_llama, lora=True, device="cuda")
    trained = [p for p in model.parameters() if p.requires_grad]
    results = []
    for layout in (PaddedRows(), PackedGroups()):
        model.zero_grad()
        total = 0.0
        for rows in layout.batches(r, 4):
            lp = layout.logprobs(model, r, rows, 1.0).logprobs
            mask = r.completion_mask[rows, : lp.shape[1]].float()
            (lp * mask).sum().backward()
            total += float((lp.detach() * mask).sum())
        results.append((total, [p.grad.clone() for p in trained]))
    (padded, g_padded), (packed, g_packed) = results
    assert packed == pytest.approx(padded, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-3) for a, b in zip(g_padded, g_packed))


def test_the_engine_mismatch_forward_takes_the_layout_and_measures_the_same(tiny_llama):
    from qerl.models.mismatch import mismatch

    model, r = ragged_rollout(tiny_llama)
    r.logprobs = stored_logprobs(model, r, 4, 1.0) + 0.01 * torch.randn(r.logprobs.shape, generator=torch.Generator()
                                                                          .manual_seed(0))
    padded, weights = mismatch(model, r, 1.0, cap=2.0)
    packed, packed_weights = mismatch(model, r, 1.0, cap=2.0, layout=PackedGroups())
    assert padded.keys() == packed.keys() and padded["rollout/mismatch_kl"] > 0
    assert all(packed[k] == pytest.approx(padded[k], rel=1e-3, abs=1e-7) for k in padded)
    assert torch.allclose(weights, packed_weights, atol=1e-5)


def test_a_module_hands_its_layout_to_the_vllm_engine_scoring_forward():
    from rl_helpers import tiny_module

    from qerl.rollout.vllm import VLLM

    assert isinstance(tiny_module(rollout=VLLM(), pack_groups=True).rollout.scoring_layout, PackedGroups)
    assert isinstance(tiny_module(rollout=VLLM()).rollout.scoring_layout, PaddedRows)
    assert VLLM().scoring_layout is None  # on its own: padded rows (stored_logprobs' default)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_packed_logprobs_in_bfloat16_by_segments_and_by_the_mask(tiny_llama, monkeypatch):
    """The training dtype on CUDA: segment attention (flash / memory-efficient kernels with a lower-right causal bias)
    and the dense additive mask (aligned rows) both agree with the padded rows within bf16 rounding."""
    from qerl.models import segment_attention

    monkeypatch.setattr(segment_attention, "ONE_CALL_WASTE", 100.0)  # batched: one padded call for every group
    model, r = ragged_rollout(tiny_llama, device="cuda")
    model = model.to(torch.bfloat16)
    for layout in (PackedGroups(segments=True), PackedGroups(segments=False), PackedGroups(segments=True, batched=True)):
        gaps = []
        for rows in layout.batches(r, 4):
            a = PaddedRows().logprobs(model, r, rows, 1.0).logprobs
            b = layout.logprobs(model, r, rows, 1.0).logprobs
            mask = r.completion_mask[rows, : a.shape[1]].bool()
            assert torch.isfinite(b[mask]).all()
            gaps.append((a[mask] - b[mask]).abs())
        gap = torch.cat(gaps)
        assert float(gap.mean()) < 2e-2 and float(gap.max()) < 0.25, (layout.segments, float(gap.mean()))
    assert model.config._attn_implementation == "qerl_packed"
