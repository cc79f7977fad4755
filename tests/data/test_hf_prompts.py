"""HFPrompts: real parquet, arrow, jsonl, csv files and folders read with `datasets`; columns, chats, splits, errors."""
from __future__ import annotations

import json

import pytest

from qerl.data.base import DatasetError
from qerl.data.hf_prompts import HFPrompts

BIGMATH_LIKE = {  # Big-Math's columns: problem, answer, source, domain, llama8b_solve_rate
    "problem": ["What is 2+3?", "What is 7*6?", "What is 10-4?", "What is 9/3?"],
    "answer": ["5", "42", 6, 3.0],
    "source": ["cn_k12", "orca_math", "cn_k12", "gsm8k"],
    "domain": [["Arithmetic"], ["Arithmetic"], ["Algebra"], ["Arithmetic"]],
    "llama8b_solve_rate": [0.9, 0.5, 0.7, 0.2],
}


def chat(i: int, with_answer: bool = True) -> list[dict]:
    turns = [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": f"What is {i}+1?"}]
    return turns + ([{"role": "assistant", "content": str(i + 1)}] if with_answer else [])


@pytest.fixture
def parquet(tmp_path):
    import pandas as pd

    path = tmp_path / "bigmath.parquet"
    pd.DataFrame({k: [str(v) if k == "answer" else v for v in vals] for k, vals in BIGMATH_LIKE.items()}).to_parquet(path)
    return path


def module(path, tmp_path, **kwargs) -> HFPrompts:
    return HFPrompts(path=str(path), cache_dir=str(tmp_path / "cache"), **kwargs)


def test_parquet_columns_map_and_extra_columns_reach_meta(parquet, tmp_path, tiny_tokenizer):
    dm = module(parquet, tmp_path, question_column="problem", system_prompt="boxed")
    rows = dm.rows("train")
    assert [r.question for r in rows] == BIGMATH_LIKE["problem"]
    assert [r.answer for r in rows] == ["5", "42", "6", "3.0"]
    assert rows[1].meta == {"answer": "42", "source": "orca_math", "domain": ["Arithmetic"], "llama8b_solve_rate": 0.5}
    dm.set_tokenizer(tiny_tokenizer)
    prompt, answer, meta = dm.prepared("test")[0]  # no test split: the train split
    assert prompt.startswith("<|im_start|>system\nPlease reason step by step") and "What is 2+3?" in prompt
    assert prompt.endswith("<|im_start|>assistant\n") and answer == "5" and meta["source"] == "cn_k12"
    only = module(parquet, tmp_path, question_column="problem", extra_columns=["llama8b_solve_rate"]).rows("train")
    assert only[3].meta == {"llama8b_solve_rate": 0.2, "source": "bigmath.parquet[train]:3"}


def test_chat_messages_use_the_chat_template(tmp_path, tiny_tokenizer):
    import datasets

    path = tmp_path / "chat.jsonl"
    datasets.Dataset.from_list([{"messages": chat(i), "level": i} for i in range(3)]).to_json(str(path))
    dm = module(path, tmp_path, question_column="messages", answer_column=None, system_prompt="boxed")
    dm.set_tokenizer(tiny_tokenizer)
    prompt, answer, meta = dm.prepared("train")[2]
    # the chat's own system message wins over system_prompt; the trailing assistant turn is the gold answer
    assert prompt == ("<|im_start|>system\nAnswer with a number.<|im_end|>\n<|im_start|>user\nWhat is 2+1?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    assert answer == "3" and meta["level"] == 2 and meta["prompt"] == chat(2, with_answer=False)
    assert dm.rows("train")[2].question == "What is 2+1?"


def test_folder_of_split_files_arrow_csv_and_slices(tmp_path):
    import datasets

    folder = tmp_path / "data"
    folder.mkdir()
    datasets.Dataset.from_dict({"q": ["a", "b", "c", "d"], "a": ["1", "2", "3", "4"]}).to_parquet(str(folder / "train.parquet"))
    datasets.Dataset.from_dict({"q": ["t"], "a": ["9"]}).to_parquet(str(folder / "test.parquet"))
    dm = module(folder, tmp_path, question_column="q", answer_column="a")
    assert [r.question for r in dm.rows("train")] == ["a", "b", "c", "d"]
    assert [r.answer for r in dm.rows("test")] == ["9"]  # the folder's test split
    sliced = module(folder, tmp_path, question_column="q", answer_column="a", train_split="train[:50%]",
                    test_split="train[-1:]")
    assert [r.question for r in sliced.rows("train")] == ["a", "b"] and sliced.rows("test")[0].question == "d"
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"q": ["s"], "a": ["1"]}).save_to_disk(str(saved))
    assert module(saved, tmp_path, question_column="q", answer_column="a").rows("train")[0].question == "s"
    arrow = next(saved.glob("*.arrow"))
    assert module(arrow, tmp_path, question_column="q", answer_column="a").rows("train")[0].answer == "1"
    (tmp_path / "rows.csv").write_text("question,answer,hint\nWhat is 1+1?,2,small\n")
    row = module(tmp_path / "rows.csv", tmp_path, test_path=str(arrow), test_split="train").rows("train")[0]
    assert (row.question, row.answer, row.meta["hint"]) == ("What is 1+1?", "2", "small")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"path": "missing.parquet"}, "Dataset file not found: missing.parquet"),
    ({"question_column": "question"}, r"bigmath.parquet \[train\]: no column 'question' \(columns: problem, answer"),
    ({"question_column": "problem", "answer_column": "solution"}, "no column 'solution'.*Set answer_column"),
    ({"question_column": "problem", "extra_columns": ["level"]}, "no column 'level'.*Set extra_columns"),
    ({"question_column": "problem", "test_split": "validation"}, "no split 'validation'; it has train"),
    ({"question_column": "problem", "answer_after": "####"}, r"bigmath.parquet\[train\]:0: answer has no '####'"),
])
def test_bad_input_is_one_line_naming_file_and_column(parquet, tmp_path, kwargs, message):
    kwargs = {"path": str(parquet), **kwargs}
    with pytest.raises(DatasetError, match=message) as info:
        HFPrompts(cache_dir=str(tmp_path / "cache"), **kwargs).rows("test")
    assert "\n" not in str(info.value)


def test_damaged_file_and_bad_chat_are_named(tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DatasetError, match=r"broken.parquet: datasets could not read it"):
        module(bad, tmp_path).rows("train")
    rows = tmp_path / "chat.jsonl"
    rows.write_text(json.dumps({"messages": [{"content": "no role"}], "answer": "1"}) + "\n")
    with pytest.raises(DatasetError, match=r"chat.jsonl\[train\]:0 column 'messages': every chat message needs a 'role'"):
        module(rows, tmp_path, question_column="messages").rows("train")


def test_bad_data_stops_qerl_fit_with_exit_2_before_the_model_loads(parquet, tmp_path, capsys):
    import yaml

    from qerl.cli import main

    recipe = {"trainer": {"accelerator": "cpu"},
              "model": {"policy": {"class_path": "RandomInit", "init_args": {"config": "tiny"}}, "algorithm": "GRPO",
                        "rewards": ["MathAccuracy"]},
              "data": {"class_path": "HFPrompts", "init_args": {"path": str(parquet), "cache_dir": str(tmp_path / "c")}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["fit", "--config", str(path), "--trainer.logger=false"]) == 2
    err = capsys.readouterr().err
    assert "no column 'question'" in err and "bigmath.parquet" in err and "Traceback" not in err


def test_qerl_eval_reads_a_parquet_file_with_data_path(parquet, tmp_path):
    from qerl.commands.evaluate import build_parser, dataset_module

    args = build_parser().parse_args(["--dataset", "HFPrompts", "--data_path", str(parquet), "--dataset_args",
                                      json.dumps({"question_column": "problem", "cache_dir": str(tmp_path / "c")})])
    rows = dataset_module(args).rows("test")
    assert [r.answer for r in rows] == ["5", "42", "6", "3.0"] and rows[0].meta["source"] == "cn_k12"
    with pytest.raises(DatasetError, match="the train split needs path"):
        dataset_module(args).rows("train")
