"""MATH500 evaluation set, shipped in the package (qerl/data/files/math500/test.jsonl)."""
from __future__ import annotations

from qerl.data.shipped import ShippedEvalSet
from qerl.registry import DATASETS


@DATASETS.register()
class MATH500(ShippedEvalSet):
    """MATH500: 500 competition problems (the PRM800K split of MATH, MIT); answers are LaTeX.

    See `ShippedEvalSet` for the splits and `path`; other arguments: see `PromptDataModule`.
    """

    file = "math500/test.jsonl"
    meta_fields = ("subject", "level", "unique_id")
