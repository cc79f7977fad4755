"""Tiny random-init decoder models and bit-exact snapshots for the AQN tests (fast, no download)."""
from __future__ import annotations

import pytest
import torch


def tiny_qwen3(seed: int = 0):
    """A 2-layer Qwen3 (it has q_norm/k_norm inside attention)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
    )
    return Qwen3ForCausalLM(config).eval()


def snapshot(model) -> dict[str, torch.Tensor]:
    """A bit-exact copy of every parameter and buffer."""
    state = {f"param:{n}": p.detach().clone() for n, p in model.named_parameters()}
    state.update({f"buffer:{n}": b.detach().clone() for n, b in model.named_buffers()})
    return state


def changed(model, before: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors are not bit-identical to `before` (NaN-safe, dtype-exact)."""
    now = {f"param:{n}": p for n, p in model.named_parameters()}
    now.update({f"buffer:{n}": b for n, b in model.named_buffers()})
    return sorted(k for k, v in before.items() if not _bit_equal(v, now[k].detach()))


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.view(width), b.view(width))
    return torch.equal(a, b)


@pytest.fixture
def make_llama(tiny_llama):
    """`make_llama(dtype=torch.float32, seed=0, random_norms=True)`: the suite's tiny Llama (tests/conftest.py).

    With `random_norms` the norm scales are drawn from U(0.5, 1.5) instead of all ones, so (w + Z) / w is a
    real per-channel factor rather than 1 + Z.
    """

    def build(dtype: torch.dtype = torch.float32, seed: int = 0, random_norms: bool = True):
        model = tiny_llama(seed=seed, dtype=torch.float32)
        if random_norms:
            generator = torch.Generator().manual_seed(seed + 1)
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name.endswith("norm.weight"):
                        param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
        return model.to(dtype)

    return build


@pytest.fixture
def llama(make_llama):
    return make_llama()


@pytest.fixture
def make_qwen3():
    return tiny_qwen3


@pytest.fixture
def changed_since():
    """`changed_since(model, snapshot_of(model))` -> names of tensors that are no longer bit-identical."""
    return changed


@pytest.fixture
def snapshot_of():
    return snapshot


@pytest.fixture
def tokens():
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def word_tokenizer():
    """A real (tokenizers WordLevel) tokenizer over the tiny models' 256 ids: 't0' .. 't255', eos = pad = 't2'."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({f"t{i}": i for i in range(256)}, unk_token="t0"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="t0", eos_token="t2", pad_token="t2")
