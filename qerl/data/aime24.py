"""AIME24 evaluation set, shipped in the package (qerl/data/files/aime24/test.jsonl)."""
from __future__ import annotations

from qerl.data.shipped import ShippedEvalSet
from qerl.registry import DATASETS


@DATASETS.register()
class AIME24(ShippedEvalSet):
    """AIME 2024: 30 problems with integer answers 0-999.

    See `ShippedEvalSet` for the splits and `path`; other arguments: see `PromptDataModule`.
    """

    file = "aime24/test.jsonl"
    meta_fields = ("id", "url")
