"""GSM8K grade-school math (openai/grade-school-math, MIT), shipped in the package."""
from __future__ import annotations

from qerl.data.base import PromptDataModule, PromptRow
from qerl.data.jsonl import rows_from_jsonl
from qerl.data.shipped import shipped
from qerl.registry import DATASETS


@DATASETS.register()
class GSM8K(PromptDataModule):
    """GSM8K: 7,473 train / 1,319 test word problems; gold answers are the numbers after `####`.

    Validation rows are held out of the train file (`val_size`/`val_split`); test is
    the test file. Pair with `GSM8KAccuracy`. Other arguments: see `PromptDataModule`.
    """

    def __init__(self, train_path: str = shipped("gsm8k/train.jsonl"), test_path: str = shipped("gsm8k/test.jsonl"),
                 **kwargs) -> None:
        """`train_path`/`test_path`: jsonl files (default: the shipped copies); `**kwargs`: see `PromptDataModule`."""
        super().__init__(**kwargs)
        self.train_path, self.test_path = train_path, test_path

    def load_rows(self, split: str) -> list[PromptRow]:
        path = self.train_path if split == "train" else self.test_path
        return rows_from_jsonl(path, "question", "answer", answer_after="####")
