"""Any jsonl file of questions and answers, with configurable field names."""
from __future__ import annotations

from qerl.data.base import DatasetError, PromptDataModule, PromptRow
from qerl.data.jsonl import rows_from_jsonl
from qerl.registry import DATASETS


@DATASETS.register()
class JsonlPrompts(PromptDataModule):
    """Prompts from your own jsonl files: map `question_field` and `answer_field`, optionally cut at a marker.

    Without `test_path` the test split is the train file; validation rows are held
    out of the train file with `val_size`/`val_split`. Other arguments: see `PromptDataModule`.

    Args:
        train_path: jsonl with one object per line.
        test_path: jsonl for `test_dataloader` (defaults to `train_path`).
        question_field: key of the question text.
        answer_field: key of the gold answer (numbers become text; 27.0 becomes "27").
        answer_after: keep only the text after the last occurrence of this marker (e.g. "####").
        meta_fields: keys copied into each row's meta.
    """

    def __init__(
        self,
        train_path: str,
        test_path: str | None = None,
        question_field: str = "question",
        answer_field: str = "answer",
        answer_after: str | None = None,
        meta_fields: list[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not train_path:
            raise DatasetError("JsonlPrompts: train_path is required (a jsonl file with one object per line).")
        self.train_path = train_path
        self.test_path = test_path or train_path
        self.question_field, self.answer_field = question_field, answer_field
        self.answer_after = answer_after
        self.meta_fields = list(meta_fields or [])

    def load_rows(self, split: str) -> list[PromptRow]:
        path = self.train_path if split == "train" else self.test_path
        return rows_from_jsonl(path, self.question_field, self.answer_field, self.answer_after, self.meta_fields)
