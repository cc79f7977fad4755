"""Quality metrics: answer extraction, agreement, and the dequantized copy used for fast evaluation."""
from __future__ import annotations

import math

import torch

from qerl.evaluation.quality import (
    agreement,
    chat_prompts,
    dequantized_copy,
    final_number,
    greedy_generate,
    solution_perplexity,
)
from qerl.models import RandomInit


def test_final_number():
    assert final_number("so 3 + 4 = 7. The answer is 1,200 dollars") == "1200"
    assert final_number("$18.50 total, i.e. 18.50") == "18.5"
    assert final_number("no digits") is None


def test_agreement_counts():
    a = agreement(["x is 5", "y is 6", "z"], ["x is 5", "y = 6", "w"], gold=["#### 5", "#### 7", "#### 1"])
    assert (a.same_text, a.correct) == (1 / 3, 1 / 3)
    assert a.same_answer == 1.0  # 5 = 5, 6 = 6, None = None
    assert a.mean_common_prefix_chars == (6 + 2 + 0) / 3


def test_dequantized_copy_matches_quantlinear_and_generation_runs():
    model, tokenizer = RandomInit("tiny").load("NVFP4")
    dense = dequantized_copy(model)
    assert not any(type(m).__name__ == "QuantLinear" for m in dense.modules())
    x = torch.randn(3, 5, 64, dtype=torch.bfloat16)
    quant, plain = model.model.layers[1].self_attn.q_proj, dense.model.layers[1].self_attn.q_proj
    with torch.no_grad():  # each layer is bit-exact; whole-model logits can differ in the last bf16 bit because
        assert torch.equal(quant(x), plain(x))  # CPU SDPA picks its path by input strides
        ids = tokenizer(["what is 12 + 35?"], return_tensors="pt")["input_ids"]
        torch.testing.assert_close(model(ids).logits, dense(ids).logits, atol=2e-2, rtol=0)
    prompts = chat_prompts(tokenizer, ["a?", "bb?"])
    assert len(greedy_generate(dense, tokenizer, prompts, 4)) == 2
    ppl = solution_perplexity(dense, tokenizer, prompts, ["x", "y z"])
    assert math.isfinite(ppl) and 100 < ppl < 1000  # random weights: close to the 320-entry vocab
