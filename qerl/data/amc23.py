"""AMC23 evaluation set, shipped in the package (qerl/data/files/amc23/test.jsonl)."""
from __future__ import annotations

from qerl.data.base import PromptDataModule, PromptRow
from qerl.data.jsonl import rows_from_jsonl
from qerl.data.shipped import shipped
from qerl.registry import DATASETS


@DATASETS.register()
class AMC23(PromptDataModule):
    """AMC 2023: 40 problems with numeric answers.

    An evaluation set with one file: test is the whole file, and train is the same
    file (minus any `val_size`/`val_split` hold-out) for small RL runs on it.
    Pair with `MathAccuracy`. Other arguments: see `PromptDataModule`.
    """

    def __init__(self, path: str = shipped("amc23/test.jsonl"), **kwargs) -> None:
        """`path`: the jsonl file (default: the shipped copy); `**kwargs`: see `PromptDataModule`."""
        super().__init__(**kwargs)
        self.path = path

    def load_rows(self, split: str) -> list[PromptRow]:
        return rows_from_jsonl(self.path, "problem", "answer", meta_fields=("id", "url"))
