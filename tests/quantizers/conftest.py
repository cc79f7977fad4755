"""Shared helpers for the quantizer tests: tiny random-init Llama models (fast on 2 CPU cores)."""
from __future__ import annotations

import pytest
import torch


def tiny_llama(seed: int = 0, vocab: int = 96, dtype: torch.dtype = torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=64, tie_word_embeddings=False)
    return LlamaForCausalLM(config).to(dtype).eval()


@pytest.fixture
def make_tiny_llama():
    return tiny_llama


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The CI box has 2 shared cores; tiny models run fastest (and steadiest) on one thread."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
    except RuntimeError:  # a vLLM engine in this process may own the threads
        yield
        return
    yield
    torch.set_num_threads(before)
