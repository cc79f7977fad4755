"""Paths of the data files shipped inside the package (qerl/data/files, see its README and LICENSE)."""
from __future__ import annotations

import os

FILES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files")


def shipped(relative: str) -> str:
    """Absolute path of a shipped file, e.g. `shipped("gsm8k/train.jsonl")`."""
    return os.path.join(FILES_DIR, relative)
