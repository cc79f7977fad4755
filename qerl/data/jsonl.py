"""Reading jsonl files with errors that name the file and line."""
from __future__ import annotations

import json
import os

from qerl.data.base import DatasetError, PromptRow


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every row of a jsonl file as a dict; blank lines are skipped.

    Raises `DatasetError` naming the file (and line) for a missing file, a row that
    is not valid JSON or not an object, and a file with no rows.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetError(f"Dataset file not found: {path}. Check the path argument of the data module.")
    rows = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = decoded_line(raw, path, number)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}). "
                                   "Fix or delete that line.") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}.")
            row["_line"] = number
            rows.append(row)
    if not rows:
        raise DatasetError(f"{path}: the file has no rows.")
    return rows


def decoded_line(raw: bytes, path: str, number: int) -> str:
    """One line of a jsonl file as text; bytes that are not UTF-8 raise `DatasetError` naming file, line and column."""
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}:{number}: byte 0x{raw[exc.start]:02x} (byte {exc.start + 1} of the line) is not UTF-8 "
                           "(jsonl files are UTF-8). Re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) "
                           "or fix that line.") from None


def answer_text(value) -> str:
    """A gold answer as text; integral floats lose their `.0` (AMC stores 27.0 for 27)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def rows_from_jsonl(
    path: str | os.PathLike,
    question_field: str,
    answer_field: str,
    answer_after: str | None = None,
    meta_fields: tuple[str, ...] | list[str] = (),
) -> list[PromptRow]:
    """`PromptRow`s from a jsonl file, mapping fields; a missing field raises naming file, line and keys.

    Args:
        answer_after: keep only the text after the last occurrence of this marker
            in the answer field (GSM8K solutions end in `#### 72`).
        meta_fields: fields copied into each row's meta (missing ones are skipped).
    """
    out = []
    for row in read_jsonl(path):
        number = row.pop("_line")
        for key in (question_field, answer_field):
            if row.get(key, "") is None:
                raise DatasetError(f"{os.fspath(path)}:{number}: field {key!r} is null; give it a value or delete "
                                   "the row.")
            if key not in row:
                raise DatasetError(f"{os.fspath(path)}:{number}: missing field {key!r} (row has "
                                   f"{', '.join(sorted(row)) or 'no fields'}). Set question_field/answer_field "
                                   "(qerl eval: --question_field/--answer_field).")
        answer = answer_text(row[answer_field])
        if answer_after is not None:
            if answer_after not in answer:
                raise DatasetError(f"{os.fspath(path)}:{number}: answer has no {answer_after!r} marker.")
            answer = answer.rsplit(answer_after, 1)[1].strip()
        meta = {k: row[k] for k in meta_fields if k in row}
        meta["source"] = f"{os.path.basename(os.fspath(path))}:{number}"
        out.append(PromptRow(str(row[question_field]), answer, meta))
    return out
