"""How much a quantized policy differs from its bf16 original: weight error, greedy-answer agreement, perplexity.

Used by `benchmarks/quant_quality.py` (the report in docs/quantization-quality.md) and by tests.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from torch import nn

from qerl.quantizers.layers import QuantLinear

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The last number in `text` ("1,200" -> "1200", "3.50" -> "3.5"), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = found[-1].replace(",", "")
    return value.rstrip("0").rstrip(".") if "." in value else value


def dequantized_copy(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A copy of `model` in `dtype` whose QuantLinear layers are nn.Linear holding the dequantized weight.

    Its outputs equal the QuantLinear reference path with `dtype` activations exactly (both run F.linear on the
    same dequantized weight), but generation no longer dequantizes every layer at every decoding step, which
    is what makes a 50-question CPU evaluation affordable.
    """
    dense = copy.deepcopy(model)
    for name, layer in [(n, m) for n, m in dense.named_modules() if isinstance(m, QuantLinear)]:
        bias = layer.bias is not None
        linear = nn.Linear(layer.in_features, layer.out_features, bias=bias, device=layer.codes.device,
                           dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(layer.dequantize(dtype))
            if bias:
                linear.bias.copy_(layer.bias)
        parent, _, child = name.rpartition(".")
        setattr(dense.get_submodule(parent) if parent else dense, child, linear)
    return dense.to(dtype)


def chat_prompts(tokenizer, questions: list[str], instruction: str = "") -> list[str]:
    """Questions wrapped in the tokenizer's chat template, ready to generate the assistant turn."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": q + instruction}], tokenize=False,
                                          add_generation_prompt=True) for q in questions]


@torch.no_grad()
def greedy_generate(model: nn.Module, tokenizer, prompts: list[str], max_new_tokens: int = 128,
                    batch_size: int = 50) -> list[str]:
    """Greedy completions (special tokens skipped), left-padded batches."""
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(device)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        texts += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return texts


@dataclass
class Agreement:
    """How often a quantized model's greedy answers match the reference model's."""

    n: int
    same_text: float  # identical completions
    same_answer: float  # same final number (both None counts as the same)
    correct: float  # final number equals the gold answer
    mean_common_prefix_chars: float  # characters before the first difference


def agreement(reference: list[str], texts: list[str], gold: list[str] | None = None) -> Agreement:
    n = len(reference)
    prefix = []
    for a, b in zip(reference, texts):
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        prefix.append(k)
    correct = 0.0
    if gold is not None:
        correct = sum(final_number(t) == final_number(g) for t, g in zip(texts, gold)) / n
    return Agreement(n=n, same_text=sum(a == b for a, b in zip(reference, texts)) / n,
                     same_answer=sum(final_number(a) == final_number(b) for a, b in zip(reference, texts)) / n,
                     correct=correct, mean_common_prefix_chars=sum(prefix) / n)


@torch.no_grad()
def solution_perplexity(model: nn.Module, tokenizer, prompts: list[str], solutions: list[str],
                        batch_size: int = 16) -> float:
    """exp(mean NLL) of the `solutions` tokens given their chat `prompts` (teacher forcing)."""
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(prompts), batch_size):
        rows = []
        for p, s in zip(prompts[start:start + batch_size], solutions[start:start + batch_size]):
            p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
            s_ids = tokenizer(s, add_special_tokens=False)["input_ids"]
            rows.append((p_ids + s_ids, len(p_ids)))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, n_prompt) in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            labels[i, n_prompt:len(row)] = torch.tensor(row[n_prompt:])
            mask[i, :len(row)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        nll = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                          labels[:, 1:].reshape(-1).to(device), ignore_index=-100, reduction="sum")
        total_nll += float(nll)
        total_tokens += int((labels[:, 1:] != -100).sum())
    return float(torch.exp(torch.tensor(total_nll / max(total_tokens, 1))))
