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
        train_path: str = shipped("gsm8k/train.jsonl"),
        test_path: str = shipped("gsm8k/test.jsonl"),
    ) -> None:
        super().__init__(batch_size, seed, system_prompt, prompt_template, max_prompt_tokens, on_too_long, limit,
                         val_size, val_split)
        self.train_path, self.test_path = train_path, test_path

    def load_rows(self, split: str) -> list[PromptRow]:
        path = self.train_path if split == "train" else self.test_path
        return rows_from_jsonl(path, "question", "answer", answer_after="####")
