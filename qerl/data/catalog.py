"""Listing dataset rows by registered name (for `qerl eval` and the docs)."""
from __future__ import annotations

from qerl.data.base import DatasetError, PromptRow
from qerl.registry import DATASETS, RegistryError


def dataset_names() -> list[str]:
    """Every registered dataset name (built-ins and plugins)."""
    return DATASETS.names()


def load_dataset_rows(name: str, split: str = "test", limit: int | None = None, **kwargs) -> list[PromptRow]:
    """Rows (question, gold answer, meta) of a registered dataset's split, unformatted.

    `kwargs` go to the data module's constructor (e.g. `path=...`, `digits=1`).
    An unknown name raises an error listing the known names.
    """
    try:
        cls = DATASETS.get(name)
    except RegistryError as exc:
        raise DatasetError(str(exc)) from None
    module = cls(limit=limit, **kwargs)
    return module.rows(split)
