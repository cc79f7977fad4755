"""The dataset extension point: LightningDataModules that yield prompts and gold answers."""
from __future__ import annotations

import lightning as L


class PromptDataModule(L.LightningDataModule):
    """Yields `qerl.types.PromptBatch` batches of chat-formatted prompts.

    The module calls `set_tokenizer(tokenizer)` before `setup`, so chat templates
    come from the policy's own tokenizer.
    """

    tokenizer = None

    def set_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer
