"""The data-module contract on the shipped files: splits, hold-out, limit, formatting, length limit."""
import logging

import pytest

from qerl.data import AIME24, AMC23, GSM8K, MATH500, DatasetError, PromptDataModule, dataset_names, load_dataset_rows
from qerl.data.arithmetic import Arithmetic
from qerl.types import PromptBatch


def test_shipped_files_have_their_rows():
    assert [len(GSM8K().rows(s)) for s in ("train", "val", "test")] == [7473, 0, 1319]
    assert len(MATH500().rows("test")) == 500 and len(AIME24().rows("test")) == 30 and len(AMC23().rows("test")) == 40


def test_gold_answers_are_final_answers():
    assert GSM8K(limit=1).rows("test")[0].answer == "18"
    assert AMC23(limit=1).rows("test")[0].answer == "27"  # 27.0 in the file
    assert AIME24(limit=8).rows("test")[7].answer == "025"
    assert MATH500(limit=1).rows("test")[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_val_holdout_is_seeded_and_disjoint():
    a, b, c = GSM8K(val_size=50, seed=1), GSM8K(val_size=50, seed=1), GSM8K(val_size=50, seed=2)
    val = [r.meta["source"] for r in a.rows("val")]
    assert val == [r.meta["source"] for r in b.rows("val")] != [r.meta["source"] for r in c.rows("val")]
    assert not set(val) & {r.meta["source"] for r in a.rows("train")}
    assert len(a.rows("train")) == 7423
    assert len(GSM8K(val_split=0.1).rows("val")) == 747


def test_train_loader_shuffles_with_the_seed(tiny_tokenizer):
    def first_answers(seed):
        dm = GSM8K(batch_size=16, seed=seed, limit=200)
        dm.set_tokenizer(tiny_tokenizer)
        dm.setup("fit")
        return next(iter(dm.train_dataloader())).answers

    assert first_answers(0) == first_answers(0) != first_answers(1)


def test_batches_are_prompt_batches(tiny_tokenizer):
    dm = MATH500(batch_size=3, limit=7, system_prompt="boxed")
    dm.set_tokenizer(tiny_tokenizer)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert [len(b) for b in batches] == [3, 3, 1] and all(isinstance(b, PromptBatch) for b in batches)
    prompt = batches[0].prompts[0]
    assert prompt.startswith("<|im_start|>system\nPlease reason step by step")
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n") and "Convert the point" in prompt
    assert batches[0].meta[0]["subject"] == "Precalculus"
    assert dm.val_dataloader() == []


def test_without_tokenizer_prompts_are_plain_text(caplog):
    dm = AIME24(limit=2, system_prompt="Be brief.", prompt_template="Problem: {question}\nAnswer:")
    with caplog.at_level(logging.WARNING):
        dm.setup("test")
    prompt = next(iter(dm.test_dataloader())).prompts[0]
    assert prompt.startswith("Be brief.\n\nProblem: Every morning Aya") and prompt.endswith("\nAnswer:")
    assert any("no tokenizer" in r.message for r in caplog.records)


def test_too_long_prompts_are_skipped_with_a_count(tiny_tokenizer, caplog):
    dm = GSM8K(limit=100, max_prompt_tokens=60)
    dm.set_tokenizer(tiny_tokenizer)
    lengths = [len(tiny_tokenizer(dm.format(r.question))["input_ids"]) for r in dm.rows("test")]
    with caplog.at_level(logging.WARNING):
        kept = sum(len(b) for b in dm.test_dataloader())
    too_long = sum(n > 60 for n in lengths)
    assert 0 < too_long < 100 and kept == 100 - too_long and dm.skipped["test"] == too_long
    assert any(f"skipped {too_long} of 100" in r.message and "on_too_long='skip'" in r.message
               for r in caplog.records)


def test_too_long_prompts_can_fail(tiny_tokenizer):
    dm = GSM8K(limit=100, max_prompt_tokens=60, on_too_long="error")
    dm.set_tokenizer(tiny_tokenizer)
    with pytest.raises(DatasetError, match=r"GSM8K test row \d+ \(test.jsonl:\d+\): prompt is \d+ tokens"):
        dm.test_dataloader()


def test_all_too_long_is_an_error():
    with pytest.raises(DatasetError, match="every prompt is longer"):
        AMC23(max_prompt_tokens=1).test_dataloader()


def test_bad_arguments_speak():
    with pytest.raises(DatasetError, match="on_too_long"):
        GSM8K(on_too_long="truncate")
    with pytest.raises(DatasetError, match="cannot hold out 30"):
        AIME24(val_size=30).rows("val")
    with pytest.raises(DatasetError, match="prompt_template"):
        GSM8K(prompt_template="no placeholder")
    with pytest.raises(DatasetError, match="Unknown split"):
        GSM8K().rows("dev")


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DatasetError, match="empty.jsonl: the file has no rows"):
        MATH500(path=str(path)).rows("test")


def test_catalog_lists_rows_and_known_names():
    assert {"GSM8K", "MATH500", "AIME24", "AMC23", "Arithmetic", "JsonlPrompts"} <= set(dataset_names())
    rows = load_dataset_rows("gsm8k", limit=3)
    assert [r.answer for r in rows] == ["18", "3", "70000"]
    with pytest.raises(DatasetError, match="Did you mean GSM8K"):
        load_dataset_rows("gsm8kk")


def test_base_without_rows_says_what_to_implement():
    with pytest.raises(NotImplementedError, match="load_rows"):
        PromptDataModule().rows("test")


def test_val_batch_size_sets_only_the_validation_batches(tiny_tokenizer):
    dm = Arithmetic(num_train=40, val_size=20, batch_size=4, val_batch_size=16)
    dm.set_tokenizer(tiny_tokenizer)
    dm.setup("fit")
    assert [len(b) for b in dm.val_dataloader()] == [16, 4]
    assert {len(b) for b in dm.train_dataloader()} == {4}
    default = Arithmetic(num_train=40, val_size=20, batch_size=4)
    default.set_tokenizer(tiny_tokenizer)
    assert [len(b) for b in default.val_dataloader()] == [4] * 5
    with pytest.raises(DatasetError, match="val_batch_size must be >= 1"):
        Arithmetic(val_batch_size=0)
