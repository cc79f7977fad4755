"""Chunked log-probs equal the full-logits ones (values and gradients); micro-batching does not change the gradient."""
from __future__ import annotations

import pytest
import torch

from qerl.algorithms import DAPO, GRPO
from qerl.models.logprobs import completion_logprobs, position_ids_from_mask, stored_logprobs
from qerl.training.update import TrainBatch, accumulate_gradients

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def rollout_and_model(tiny_llama_rollout):  # tests/conftest.py
    return tiny_llama_rollout(["1+1=", "A much longer prompt here", "xyz"], n=4)


def reference_logprobs(model, r, temperature=1.0):
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    mask = torch.cat([r.prompt_mask, r.completion_mask], 1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits.float()
    p, t = r.prompt_ids.shape[1], r.completion_ids.shape[1]
    logp = torch.log_softmax(logits[:, p - 1 : p - 1 + t] / temperature, -1)
    return logp.gather(-1, r.completion_ids.unsqueeze(-1)).squeeze(-1), logp


@pytest.mark.parametrize("budget", [1, 300, 1 << 30])  # one position per chunk, a few, everything at once
def test_chunked_logprobs_and_entropy_equal_the_full_logits(rollout_and_model, budget):
    model, r = rollout_and_model
    mask = r.completion_mask.bool()
    ref, logp = reference_logprobs(model, r, temperature=0.8)
    out = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                              temperature=0.8, with_entropy=True, logits_budget=budget)
    assert torch.allclose(out.logprobs[mask], ref[mask], atol=1e-5)
    entropy = -(logp.exp() * logp).sum(-1)
    assert torch.allclose(out.entropy[mask], entropy[mask], atol=1e-4)
    # gradients through the checkpointed chunks equal those through the full logits
    (out.logprobs * mask).sum().backward()
    chunked = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (reference_logprobs(model, r, temperature=0.8)[0] * mask).sum().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(chunked, model.parameters()))
    model.zero_grad()


@pytest.mark.parametrize("algorithm", [GRPO(), GRPO(loss_aggregation="constant", max_completion_length=9), DAPO()],
                         ids=["GRPO-seq-mean", "DrGRPO-constant", "DAPO-token-mean"])
def test_micro_batches_sum_to_the_full_batch_gradient(rollout_and_model, algorithm):
    model, r = rollout_and_model
    rewards = torch.arange(r.num_rows, dtype=torch.float32) % 3
    batch = TrainBatch(r, algorithm.advantages(rewards, r.group_size))
    batch.old_logprobs = stored_logprobs(model, r, 5, 1.0) + 0.05  # off-policy, so the ratio is not 1

    def grads(micro):
        model.zero_grad()
        result = accumulate_gradients(model, algorithm, batch, micro, 1.0, lambda loss: loss.backward())
        return result, [p.grad.clone() for p in model.parameters()]

    whole, g_whole = grads(r.num_rows)
    split, g_split = grads(5)  # uneven micro-batches: 5 + 5 + 2 rows
    assert whole.finite and split.finite
    assert split.metrics["loss"] == pytest.approx(whole.metrics["loss"], rel=1e-5, abs=1e-7)
    assert split.metrics["ratio_max"] == pytest.approx(whole.metrics["ratio_max"], rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_whole, g_split))
    model.zero_grad()


def test_micro_batches_group_rows_by_length_so_a_few_long_completions_do_not_pad_the_rest():
    from qerl.models.logprobs import micro_batches, padded_positions

    # 16 rows: two at the 64-token cap, the rest short, the long ones far apart (as vLLM returns them)
    lengths = [64, 5, 7, 6, 5, 8, 9, 4, 6, 64, 7, 5, 6, 8, 4, 5]
    mask = (torch.arange(64)[None, :] < torch.tensor(lengths)[:, None]).long()
    groups = list(micro_batches(mask, 4))
    assert sorted(torch.cat(groups).tolist()) == list(range(16))  # every row once
    assert set(groups[0][:2].tolist()) == {0, 9}  # the two long rows share one micro-batch
    in_order = sum(4 * max(lengths[i:i + 4]) for i in range(0, 16, 4))
    assert in_order == 4 * 64 + 4 * 9 + 4 * 64 + 4 * 8
    assert padded_positions(mask, 4) == 4 * 64 + 4 * 8 + 4 * 6 + 4 * 5  # 332 positions instead of 580


def test_stored_logprobs_land_in_each_rows_own_place_whatever_the_grouping(rollout_and_model):
    model, r = rollout_and_model
    whole = stored_logprobs(model, r, r.num_rows, 1.0)
    for size in (1, 5):
        assert torch.allclose(stored_logprobs(model, r, size, 1.0), whole, atol=1e-5)
