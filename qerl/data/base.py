"""The dataset extension point: LightningDataModules that yield prompts and gold answers."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import lightning as L

from qerl.data.prompts import format_prompt, resolve_system_prompt
from qerl.data.sampler import EpochShuffle
from qerl.types import PromptBatch

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class PromptRow:
    """One problem: the user-facing question, the gold answer string, and anything else worth logging."""

    question: str
    answer: str
    meta: dict = field(default_factory=dict)


class DatasetError(ValueError):
    """Bad dataset input (file, line, field, size); the message says where and what to do."""


def collate_prompts(rows: list[tuple[str, str, dict]]) -> PromptBatch:
    """DataLoader collate_fn: (prompt, answer, meta) tuples -> `PromptBatch`."""
    return PromptBatch(prompts=[r[0] for r in rows], answers=[r[1] for r in rows], meta=[r[2] for r in rows])


class PromptDataModule(L.LightningDataModule):
    """Yields `qerl.types.PromptBatch` batches of chat-formatted prompts.

    The module calls `set_tokenizer(tokenizer)` before `setup`, so chat templates
    come from the policy's own tokenizer. Built-in datasets only implement
    `load_rows(split)`; this class does the rest: held-out validation rows,
    `limit`, chat formatting, the prompt-length limit, and seeded shuffling.
    Without a tokenizer, prompts are plain text (system prompt, blank line,
    question) and lengths are counted in whitespace-separated words.

    Args:
        batch_size: prompts per step (each is sampled `n` times by the rollout).
        seed: seeds the train shuffle and the validation hold-out.
        system_prompt: a system message, or a preset name from `qerl.data.prompts.SYSTEM_PROMPTS`
            ("think_answer" is QeRL's instruction); None for none.
        prompt_template: the user message; `{question}` is replaced by the question.
        max_prompt_tokens: longest formatted prompt allowed (tokens); None for no limit.
        on_too_long: "skip" (drop and log the count) or "error" (raise naming the row).
        limit: keep at most this many rows per split (first rows, before shuffling).
        val_size: rows held out of the train split for validation (seeded); overrides val_split.
        val_split: fraction of the train split held out for validation.
        val_batch_size: prompts per validation batch (default `batch_size`). Each batch is one rollout call, and
            validation samples few completions per prompt: 64 prompts x 1 sample fill the 64 rows that 8 prompts x 8
            samples fill in training, in one call instead of eight.
    """

    tokenizer = None

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
        val_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise DatasetError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}.")
        if val_batch_size is not None and val_batch_size < 1:
            raise DatasetError(f"{type(self).__name__}: val_batch_size must be >= 1 (or null for batch_size), "
                               f"got {val_batch_size}.")
        if on_too_long not in ("skip", "error"):
            raise DatasetError(f"{type(self).__name__}: on_too_long must be 'skip' or 'error', got {on_too_long!r}.")
        if val_split is not None and not 0.0 <= val_split < 1.0:
            raise DatasetError(f"{type(self).__name__}: val_split must be in [0, 1), got {val_split}.")
        if "{question}" not in prompt_template:
            raise DatasetError(f"{type(self).__name__}: prompt_template must contain '{{question}}', "
                               f"got {prompt_template!r}.")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.system_prompt = resolve_system_prompt(system_prompt)
        self.prompt_template = prompt_template
        self.max_prompt_tokens = max_prompt_tokens
        self.on_too_long = on_too_long
        self.limit = limit
        self.val_size = val_size
        self.val_split = val_split
        self.val_batch_size = int(val_batch_size) if val_batch_size is not None else None
        self.skipped: dict[str, int] = {}
        self._prepared: dict[str, list[tuple[str, str, dict]]] = {}
        self._raw: dict[str, list[PromptRow]] = {}

    def set_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._prepared.clear()

    # ------------------------------------------------------------------ rows
    def load_rows(self, split: str) -> list[PromptRow]:
        """Raw rows of "train" or "test" (before hold-out and limit). Built-in datasets override this."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_rows(split) or its own dataloaders.")

    def rows(self, split: str) -> list[PromptRow]:
        """Rows of "train", "val" or "test" after the validation hold-out and `limit`."""
        if split not in SPLITS:
            raise DatasetError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
        if split == "test":
            rows = self._raw_rows("test")
        else:
            train = self._raw_rows("train")
            held = self._holdout_count(len(train))
            order = list(range(len(train)))
            random.Random(self.seed).shuffle(order)
            chosen = set(order[:held])
            rows = [r for i, r in enumerate(train) if (i in chosen) == (split == "val")]
        return rows[: self.limit] if self.limit is not None else rows

    def _raw_rows(self, split: str) -> list[PromptRow]:
        if split not in self._raw:
            rows = self.load_rows(split)
            if not rows:
                raise DatasetError(f"{type(self).__name__}: the {split} split is empty; point it at a file with rows.")
            self._raw[split] = rows
        return self._raw[split]

    def _holdout_count(self, n: int) -> int:
        if self.val_size is not None:
            count = int(self.val_size)
        elif self.val_split is not None:
            count = round(self.val_split * n)
        else:
            return 0
        if not 0 <= count < n:
            raise DatasetError(f"{type(self).__name__}: cannot hold out {count} validation rows from {n} train rows; "
                               "lower val_size/val_split.")
        return count

    # ------------------------------------------------------------- formatting
    def format(self, question: str) -> str:
        """The chat-formatted prompt for one question."""
        return format_prompt(self.prompt_template.replace("{question}", question), self.tokenizer, self.system_prompt)

    def prompt_of(self, row: PromptRow) -> str:
        """The chat-formatted prompt of one row (a dataset of chat-message prompts overrides this)."""
        return self.format(row.question)

    def prompt_length(self, prompt: str) -> int:
        if self.tokenizer is None:
            return len(prompt.split())
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def prepared(self, split: str) -> list[tuple[str, str, dict]]:
        """(prompt, answer, meta) for a split, formatted and length-filtered (cached)."""
        if split not in self._prepared:
            self._prepared[split] = self._prepare(split)
        return self._prepared[split]

    def _prepare(self, split: str) -> list[tuple[str, str, dict]]:
        out, skipped = [], 0
        for index, row in enumerate(self.rows(split)):
            prompt = self.prompt_of(row)
            if self.max_prompt_tokens is not None:
                n = self.prompt_length(prompt)
                if n > self.max_prompt_tokens:
                    if self.on_too_long == "error":
                        raise DatasetError(
                            f"{type(self).__name__} {split} row {index} ({row.meta.get('source', '?')}): prompt is "
                            f"{n} tokens, over max_prompt_tokens={self.max_prompt_tokens}. Raise the limit, or set "
                            "on_too_long='skip' to drop such rows."
                        )
                    skipped += 1
                    continue
            out.append((prompt, row.answer, dict(row.meta)))
        self.skipped[split] = skipped
        if skipped:
            log.warning("%s %s: skipped %d of %d prompts longer than max_prompt_tokens=%d (on_too_long='skip').",
                        type(self).__name__, split, skipped, skipped + len(out), self.max_prompt_tokens)
        if skipped and not out:
            raise DatasetError(f"{type(self).__name__} {split}: every prompt is longer than max_prompt_tokens="
                               f"{self.max_prompt_tokens}; raise the limit.")
        return out

    # ------------------------------------------------------------ dataloaders
    def setup(self, stage: str | None = None) -> None:
        """Nothing to do: rows are read and formatted lazily, once the module has set the tokenizer."""

    def _loader(self, split: str, shuffle: bool):
        from torch.utils.data import DataLoader

        if self.tokenizer is None:  # Lightning sets up the data before the module hands over its tokenizer
            log.warning("%s: no tokenizer was set; prompts are plain text without a chat template.",
                        type(self).__name__)

        rows = self.prepared(split)
        sampler = EpochShuffle(rows, self.seed, self.batch_size) if shuffle else None
        size = self.val_batch_size if split == "val" and self.val_batch_size else self.batch_size
        return DataLoader(rows, batch_size=size, sampler=sampler, collate_fn=collate_prompts)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        """Held-out rows (empty list, i.e. no validation, when val_size/val_split are unset)."""
        return self._loader("val", shuffle=False) if self.rows("val") else []

    def test_dataloader(self):
        return self._loader("test", shuffle=False)
