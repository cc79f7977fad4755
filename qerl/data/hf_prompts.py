"""Prompts from any dataset Hugging Face `datasets` reads: parquet, arrow, json/jsonl, csv, folders, hub names."""
from __future__ import annotations

import os

from qerl.data.base import DatasetError, PromptDataModule, PromptRow
from qerl.data.hf_source import open_dataset, select_split
from qerl.data.jsonl import answer_text
from qerl.data.prompts import format_messages
from qerl.registry import DATASETS

#: the meta key holding a row's chat-message prompt (TRL's name for the prompt column)
PROMPT_KEY = "prompt"


def as_messages(value, where: str) -> list[dict] | None:
    """A chat (a list of `{"role", "content"}` dicts) checked, or None when `value` is plain text."""
    if isinstance(value, str):
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise DatasetError(f"{where}: expected text or a list of chat messages, got {type(value).__name__}.")
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
            raise DatasetError(f"{where}: every chat message needs a 'role' and a 'content', got {message!r:.80}.")
    return [{"role": m["role"], "content": str(m["content"])} for m in value]


@DATASETS.register()
class HFPrompts(PromptDataModule):
    """Prompts from parquet, arrow, json/jsonl or csv files, a folder or a hub dataset, read with `datasets`.

    The question column holds text or a chat (a `messages` list, TRL's conversational format), rendered with
    the policy's chat template; a chat's last assistant turn is dropped from the prompt (and is the gold answer
    when `answer_column` is None). Every other column (or those in `extra_columns`) goes into each row's meta,
    so rewards see it: a `RewardFunction` gets each as a keyword argument. Other arguments: see `PromptDataModule`.

    Args:
        path: a file (`.parquet`, `.arrow`, `.jsonl`, `.json`, `.csv`, `.tsv`), a glob, a folder (`save_to_disk`
            output, or data files named by split) or a hub name (`org/dataset`, needs the network).
        name: the hub dataset's config name.
        train_split: split (or slice, "train[:90%]") the train rows come from.
        test_split: split for `test_dataloader`; None: "test" when there is one, else the train split.
        test_path: read the test split from this source instead of `path` (alone, it is enough for
            `qerl eval --dataset HFPrompts --data_path FILE`).
        question_column: the column with the question text or the chat messages.
        answer_column: the gold answer column (numbers become text); None: no gold answer, or a chat's last
            assistant turn.
        answer_after: keep only the text after the last occurrence of this marker (e.g. "####").
        extra_columns: columns copied into meta; None: every column but the question.
        cache_dir: where `datasets` caches what it reads (default: its own, ~/.cache/huggingface/datasets).
    """

    def __init__(
        self,
        path: str | None = None,
        name: str | None = None,
        train_split: str = "train",
        test_split: str | None = None,
        test_path: str | None = None,
        question_column: str = "question",
        answer_column: str | None = "answer",
        answer_after: str | None = None,
        extra_columns: list[str] | None = None,
        cache_dir: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not path and not test_path:
            raise DatasetError("HFPrompts: path is required (a data file, a folder or a hub dataset name).")
        self.path, self.name, self.test_path = path, name, test_path
        self.train_split, self.test_split = train_split, test_split
        self.question_column, self.answer_column, self.answer_after = question_column, answer_column, answer_after
        self.extra_columns = None if extra_columns is None else list(extra_columns)
        self.cache_dir = cache_dir

    def load_rows(self, split: str) -> list[PromptRow]:
        source = self.path if split == "train" else (self.test_path or self.path)
        if not source:
            raise DatasetError("HFPrompts: the train split needs path (only test_path was given).")
        splits = open_dataset(source, self.name, self.cache_dir)
        spec = self.train_split if split == "train" else self.test_split
        if spec is None:
            spec = "test" if "test" in splits else self.train_split
        table = select_split(splits, spec, source)
        extra = self._meta_columns(list(table.column_names), source, spec)
        label = os.path.basename(source.rstrip("/")) or source
        return [self._row(values, extra, f"{label}[{spec}]:{index}") for index, values in enumerate(table.to_list())]

    def _meta_columns(self, columns: list[str], source: str, spec: str) -> list[str]:
        """The columns copied into meta, after checking that every column the arguments name exists."""
        wanted = [("question_column", self.question_column)] + [("extra_columns", c) for c in self.extra_columns or []]
        if self.answer_column is not None:
            wanted.append(("answer_column", self.answer_column))
        for argument, column in wanted:
            if column not in columns:
                raise DatasetError(f"{source} [{spec}]: no column {column!r} (columns: {', '.join(columns)}). "
                                   f"Set {argument} to one of them.")
        if self.extra_columns is not None:
            return list(self.extra_columns)
        return [c for c in columns if c != self.question_column]

    def _row(self, values: dict, extra: list[str], where: str) -> PromptRow:
        messages = as_messages(values[self.question_column], f"{where} column {self.question_column!r}")
        answer = values[self.answer_column] if self.answer_column is not None else ""
        if messages is not None:
            if messages[-1]["role"] == "assistant":
                last = messages.pop()
                answer = last["content"] if self.answer_column is None else answer
            if not messages:
                raise DatasetError(f"{where}: the chat in column {self.question_column!r} has no user turn.")
        if answer is None:
            raise DatasetError(f"{where}: column {self.answer_column!r} is empty. Fill it, or drop the row.")
        answer = answer_text(answer)
        if self.answer_after is not None:
            if self.answer_after not in answer:
                raise DatasetError(f"{where}: answer has no {self.answer_after!r} marker.")
            answer = answer.rsplit(self.answer_after, 1)[1].strip()
        meta = {c: values[c] for c in extra}
        meta.setdefault("source", where)
        if messages is None:
            return PromptRow(str(values[self.question_column]), answer, meta)
        meta[PROMPT_KEY] = messages
        user = [m["content"] for m in messages if m["role"] == "user"]
        return PromptRow(user[-1] if user else messages[-1]["content"], answer, meta)

    def prompt_of(self, row: PromptRow) -> str:
        """Chat rows through the tokenizer's chat template as given (the system prompt added when they have none)."""
        messages = row.meta.get(PROMPT_KEY)
        if isinstance(messages, list):
            return format_messages(messages, self.tokenizer, self.system_prompt)
        return super().prompt_of(row)
