"""Shared fixtures for the policy-loader tests: a tiny HF folder written once per session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_hf_folder(tmp_path_factory):
    """A tiny Qwen2 (RandomInit "tiny", seed 0) saved as an HF folder with safetensors and tokenizer."""
    from qerl.models import RandomInit

    model, tokenizer = RandomInit("tiny", stream=False).load()
    folder = tmp_path_factory.mktemp("tiny_hf")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
