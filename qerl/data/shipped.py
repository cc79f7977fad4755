"""Data files shipped inside the package (qerl/data/files, see its README and LICENSE) and the evaluation sets on them."""
from __future__ import annotations

import os
from typing import ClassVar

from qerl.data.base import PromptDataModule, PromptRow
from qerl.data.jsonl import rows_from_jsonl

FILES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files")


def shipped(relative: str) -> str:
    """Absolute path of a shipped file, e.g. `shipped("gsm8k/train.jsonl")`."""
    return os.path.join(FILES_DIR, relative)


class ShippedEvalSet(PromptDataModule):
    """An evaluation set in one shipped jsonl file (`problem`, `answer`): test is the whole file, and train is
    the same file (minus any `val_size`/`val_split` hold-out) for small RL runs on it. Pair with `MathAccuracy`."""

    #: the shipped file (relative to qerl/data/files) and the keys copied into each row's meta
    file: ClassVar[str] = ""
    meta_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: str | None = None, **kwargs) -> None:
        """`path`: the jsonl file (default: the shipped copy); `**kwargs`: see `PromptDataModule`."""
        super().__init__(**kwargs)
        self.path = path or shipped(self.file)

    def load_rows(self, split: str) -> list[PromptRow]:
        return rows_from_jsonl(self.path, "problem", "answer", meta_fields=self.meta_fields)
