import pytest

from qerl.data import DatasetError, JsonlPrompts, read_jsonl, rows_from_jsonl


def write(tmp_path, text, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_reads_rows_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, '{"q": "1+1", "a": 2}\n\n{"q": "2+2", "a": 4.0}\n')
    rows = rows_from_jsonl(path, "q", "a")
    assert [(r.question, r.answer) for r in rows] == [("1+1", "2"), ("2+2", "4")]
    assert rows[1].meta["source"] == "rows.jsonl:3"


def test_malformed_row_names_file_and_line(tmp_path):
    path = write(tmp_path, '{"q": "ok", "a": 1}\n{"q": "broken", \n')
    with pytest.raises(DatasetError, match=r"rows.jsonl:2: not valid JSON"):
        read_jsonl(path)


def test_non_object_row(tmp_path):
    with pytest.raises(DatasetError, match=r"rows.jsonl:1: expected a JSON object per line, got list"):
        read_jsonl(write(tmp_path, "[1, 2]\n"))


def test_missing_field_names_line_and_keys(tmp_path):
    path = write(tmp_path, '{"q": "1+1", "a": 2}\n{"question": "x", "a": 3}\n')
    with pytest.raises(DatasetError, match=r"rows.jsonl:2: missing field 'q' \(row has a, question\)"):
        rows_from_jsonl(path, "q", "a")


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DatasetError, match="has no rows"):
        read_jsonl(write(tmp_path, "\n\n"))
    with pytest.raises(DatasetError, match="not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_answer_after_marker(tmp_path):
    path = write(tmp_path, '{"question": "q", "answer": "work\\n#### 1,000"}\n{"question": "q", "answer": "none"}\n')
    with pytest.raises(DatasetError, match=r"rows.jsonl:2: answer has no '####' marker"):
        rows_from_jsonl(path, "question", "answer", answer_after="####")


def test_jsonl_prompts_field_mapping(tmp_path):
    path = write(tmp_path, "".join(f'{{"problem": "p{i}", "sol": {i}, "lvl": {i % 3}}}\n' for i in range(10)))
    dm = JsonlPrompts(train_path=path, question_field="problem", answer_field="sol", meta_fields=["lvl"],
                      batch_size=4, val_size=2)
    assert len(dm.rows("train")) == 8 and len(dm.rows("val")) == 2 and len(dm.rows("test")) == 10
    batch = next(iter(dm.test_dataloader()))
    assert batch.prompts == ["p0", "p1", "p2", "p3"] and batch.answers == ["0", "1", "2", "3"]
    assert batch.meta[2]["lvl"] == 2
