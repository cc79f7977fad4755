"""AMC23 evaluation set, shipped in the package (qerl/data/files/amc23/test.jsonl)."""
from __future__ import annotations

from qerl.data.shipped import ShippedEvalSet
from qerl.registry import DATASETS


@DATASETS.register()
class AMC23(ShippedEvalSet):
    """AMC 2023: 40 problems with numeric answers.

    See `ShippedEvalSet` for the splits and `path`; other arguments: see `PromptDataModule`.
    """

    file = "amc23/test.jsonl"
    meta_fields = ("id", "url")
