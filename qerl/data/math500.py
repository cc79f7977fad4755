"""MATH500 evaluation set, shipped in the package (qerl/data/files/math500/test.jsonl)."""
from __future__ import annotations

from qerl.data.base import PromptDataModule, PromptRow
from qerl.data.jsonl import rows_from_jsonl
from qerl.data.shipped import shipped
from qerl.registry import DATASETS


@DATASETS.register()
class MATH500(PromptDataModule):
    """MATH500: 500 competition problems (the PRM800K split of MATH, MIT); answers are LaTeX.

    An evaluation set with one file: test is the whole file, and train is the same
    file (minus any `val_size`/`val_split` hold-out) for small RL runs on it.
    Pair with `MathAccuracy`. Other arguments: see `PromptDataModule`.
    """

    def __init__(
        self,
        batch_size: int = 8,
        seed: int = 0,
        system_prompt: str | None = None,
        prompt_template: str = "{question}",
        max_prompt_tokens: int | None = None,
        on_too_long: str = "skip",
        limit: int | None = None,
        val_size: int | None = None,
        val_split: float | None = None,
        path: str = shipped("math500/test.jsonl"),
    ) -> None:
        super().__init__(batch_size, seed, system_prompt, prompt_template, max_prompt_tokens, on_too_long, limit,
                         val_size, val_split)
        self.path = path

    def load_rows(self, split: str) -> list[PromptRow]:
        return rows_from_jsonl(self.path, "problem", "answer", meta_fields=("subject", "level", "unique_id"))
