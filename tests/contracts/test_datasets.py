"""Contract every DATASETS entry meets: the arguments the trainer passes, and PromptBatch batches."""
from __future__ import annotations

import inspect

import pytest

from qerl.data.base import PromptDataModule
from qerl.data.shipped import shipped
from qerl.registry import DATASETS
from qerl.types import PromptBatch

COMMON_ARGS = ("batch_size", "seed", "system_prompt", "max_prompt_tokens", "on_too_long", "limit", "val_size",
               "val_split")
REQUIRED = {"JsonlPrompts": {"train_path": shipped("gsm8k/test.jsonl"), "answer_after": "####"},
            "HFPrompts": {"path": shipped("gsm8k/test.jsonl"), "answer_after": "####"}}


def build(entry, **kwargs) -> PromptDataModule:
    params = inspect.signature(entry.cls.__init__).parameters
    missing = [n for n, p in params.items() if n != "self" and p.default is inspect.Parameter.empty
               and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in REQUIRED.get(entry.name, {})]
    if missing:
        pytest.skip(f"{entry.name} needs {missing}; add them to REQUIRED in this test")
    return entry.cls(**REQUIRED.get(entry.name, {}), **kwargs)


def test_the_builtins_are_registered():
    assert {"GSM8K", "MATH500", "AIME24", "AMC23", "JsonlPrompts", "HFPrompts", "Arithmetic"} <= set(DATASETS.names())


def test_entry_is_a_documented_prompt_datamodule(datasets_entry):
    assert issubclass(datasets_entry.cls, PromptDataModule)
    assert datasets_entry.summary, f"{datasets_entry.name} needs a one-line docstring (`qerl list`)"
    # the arguments a recipe can set, as LightningCLI resolves them (`**kwargs` forwarded to the base included)
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(datasets_entry.cls, "data")
    params = {action.dest.removeprefix("data.") for action in parser._actions}
    assert set(COMMON_ARGS) <= params, f"{datasets_entry.name} lacks {set(COMMON_ARGS) - params}"


@pytest.mark.slow  # the real SmolLM2 tokenizer (session fixture)
def test_loaders_yield_prompt_batches(datasets_entry, smollm2_tokenizer):
    dm = build(datasets_entry, batch_size=4, seed=0, system_prompt="think_answer", max_prompt_tokens=None,
               on_too_long="skip", limit=6, val_size=3)
    dm.set_tokenizer(smollm2_tokenizer)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batches = list(loader)
        assert batches, f"{datasets_entry.name}: a loader yielded nothing"
        for batch in batches:
            assert isinstance(batch, PromptBatch) and 1 <= len(batch) <= 4
            assert len(batch.answers) == len(batch.meta) == len(batch.prompts)
            assert all(isinstance(a, str) and a for a in batch.answers)
            assert all(isinstance(m, dict) for m in batch.meta)
            for prompt in batch.prompts:
                assert prompt.startswith("<|im_start|>system\nA conversation between User and Assistant")
                assert prompt.endswith("<|im_start|>assistant\n")


def test_too_long_prompts_are_reported(datasets_entry):
    dm = build(datasets_entry, limit=4, max_prompt_tokens=3, on_too_long="error")
    with pytest.raises(ValueError, match="max_prompt_tokens=3"):
        dm.test_dataloader()
